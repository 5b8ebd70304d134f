"""What both estimators share: input checks, backbone loading and seeding."""

from contextlib import contextmanager

import joblib
import numpy as np
import torch
from sklearn.utils import check_random_state

from ._backbones import build_from_module, build_named
from ._input import (
    ImagePaths,
    check_images,
    check_module_input,
    file_stamp,
    first_batch,
    forget_feature_count,
    iter_batches,
)

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


@contextmanager
def autocast(device, precision):
    """``torch.autocast`` to the dtype of ``precision``; nothing for ``"float32"``."""
    dtype = PRECISIONS[precision]
    with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
        yield


def memory_format(x, channels_last):
    """``x`` in channels-last memory format where asked and 4-D, else as it is."""
    if channels_last and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


@contextmanager
def torch_seed(random_state):
    """Seed torch from ``random_state`` without touching the caller's RNG state."""
    seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def embed(body, X, batch_size, device, precision="float32", channels_last=False):
    """Pooled features of ``X`` through ``body``, in eval mode, without gradients.

    Batches keep the input's memory layout (channels-last images run faster).
    """
    cut = len(body.blocks)
    return frozen_pass(
        body, X, cut, batch_size, device, precision, channels_last, contiguous=False
    )[0]


def frozen_pass(
    body,
    X,
    cut,
    batch_size,
    device,
    precision="float32",
    channels_last=False,
    key=None,
    contiguous=True,
):
    """Run the frozen part of ``body`` once over ``X``, in eval mode, no gradients.

    Returns the pooled features of the whole (frozen) backbone, float32, and
    the activations entering block ``cut``: None when ``cut`` is past the last
    block, and when ``cut`` is 0 (they would be the preprocessed input, larger
    than the data and no cheaper to train on). Activations are float16 with
    ``precision="float16"``, float32 otherwise. ``key`` identifies the inputs
    for ``joblib.Memory``; unused here. ``contiguous`` batches compute exactly
    as the training loop's collated batches do.
    """
    stored = torch.float16 if precision == "float16" else torch.float32
    was_training = body.training
    body.eval()
    activations, pooled = [], []
    with torch.no_grad(), autocast(device, precision):
        for xb in iter_batches(X, body.preprocess, batch_size, contiguous=contiguous):
            a = body.activations(memory_format(xb.to(device), channels_last), stop=cut)
            if 0 < cut < len(body.blocks):
                activations.append(a.to(stored).cpu().numpy())
            pooled.append(body.run_from(a, cut).float().cpu().numpy())
    body.train(was_training)
    pooled = np.concatenate(pooled)
    return pooled, (np.concatenate(activations) if activations else None)


def fingerprint(body, X):
    """Content hash of a backbone (architecture, weights, preprocessing) and data.

    Pretrained weights still as loaded are identified by their ``source`` (the
    weights enum member, or the file's path, mtime and size); other weights
    are hashed, as numpy arrays since ``joblib.hash`` of a tensor depends on
    its memory address.
    """
    state = body.source
    if state is None:
        state = {k: v.detach().cpu().numpy() for k, v in body.state_dict().items()}
    config = getattr(body.preprocess, "config", None)
    if isinstance(X, ImagePaths):  # files rewritten in place must not hit the cache
        X = [file_stamp(path) for path in X]
    return joblib.hash((repr(body), config, state, X))


class BackboneMixin:
    """Input checks and backbone loading for estimators with ``backbone``/``weights``."""

    def _check_input(self, X, reset):
        if isinstance(self.backbone, str):
            if reset:
                forget_feature_count(self)
            return check_images(X, self.backbone)
        return check_module_input(self, X, reset=reset)

    def _check_common_params(self):
        if not isinstance(self.backbone, str) and self.input_size is not None:
            raise ValueError(
                f"input_size={self.input_size!r} only applies to a named image backbone; "
                f"a backbone given as a module takes its input as it is. Use "
                f"input_size=None."
            )
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(
                f"device={self.device!r} is not a torch device; use e.g. 'cpu' or 'cuda'."
            ) from exc

    def _load_backbone(self, X, check_n_blocks=None):
        """Build the backbone's :class:`Body` with its weights, output size known,
        in the memory format asked for."""
        if isinstance(self.backbone, str):
            body = build_named(self.backbone, self.weights, self.input_size, check_n_blocks)
        else:
            sample = first_batch(X, None)
            body = build_from_module(self.backbone, self.weights, sample, check_n_blocks)
        if self.channels_last:
            body.to(memory_format=torch.channels_last)
        return body

    def _pass_options(self):
        """The arguments of :func:`frozen_pass` and :func:`embed` after ``device``."""
        return self.batch_size, self.device, self.precision, self.channels_last
