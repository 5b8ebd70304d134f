"""What both estimators share: input checks, backbone loading and seeding."""

import copy
import threading
from collections import OrderedDict
from contextlib import contextmanager

import joblib
import numpy as np
import torch
from sklearn.utils import check_random_state
from torch import nn

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
    start=None,
    pooled=True,
):
    """Run the frozen part of ``body`` once over ``X``, in eval mode, no gradients.

    Returns the pooled features of the whole (frozen) backbone, float32, and
    the activations entering block ``cut``: None when ``cut`` is past the last
    block, and when ``cut`` is 0 (they would be the preprocessed input, larger
    than the data and no cheaper to train on). Activations are float16 with
    ``precision="float16"``, float32 otherwise. ``key`` identifies the inputs
    for ``joblib.Memory``; unused here. ``contiguous`` batches compute exactly
    as the training loop's collated batches do.

    ``start``, ``(k, pooled, activations)`` from an earlier pass over the same
    ``X`` with ``0 < k <= cut``, continues that pass: only blocks ``k`` to
    ``cut`` run. With ``pooled=False`` the blocks from ``cut`` up may have
    trained: the pooled features are not computed (None), except at
    ``cut == len(body.blocks)`` where they are what the frozen blocks give.
    """
    n_blocks = len(body.blocks)
    stored = torch.float16 if precision == "float16" else torch.float32
    if start is None:
        begin, known = 0, None
        batches = (
            body.preprocess(memory_format(xb.to(device), channels_last))
            for xb in iter_batches(X, body.preprocess, batch_size, contiguous=contiguous)
        )
    else:
        begin, known, earlier = start
        if begin == cut:
            return known, earlier
        batches = (  # stored float16 activations compute in float32 (or autocast)
            memory_format(a.to(device), channels_last).float()
            for a in iter_batches(earlier, None, batch_size)
        )
    want_pooled = known is None and (pooled or cut == n_blocks)
    if not want_pooled and not 0 < cut < n_blocks:
        return known, None
    was_training = body.training
    body.eval()
    activations, features = [], []
    with torch.no_grad(), autocast(device, precision):
        for a in batches:
            for block in body.blocks[begin:cut]:
                a = block(a)
            if 0 < cut < n_blocks:
                activations.append(a.to(stored).cpu().numpy())
            if want_pooled:
                features.append(body.run_from(a, cut).float().cpu().numpy())
    body.train(was_training)
    features = np.concatenate(features) if want_pooled else known
    return features, (np.concatenate(activations) if activations else None)


def weights_key(body):
    """Content hash of a backbone: architecture, weights and preprocessing.

    Pretrained weights still as loaded are identified by their ``source`` (the
    weights enum member, or the file's path, mtime and size); other weights
    are hashed, as numpy arrays since ``joblib.hash`` of a tensor depends on
    its memory address.
    """
    state = body.source
    if state is None:
        state = {k: v.detach().cpu().numpy() for k, v in body.state_dict().items()}
    config = getattr(body.preprocess, "config", None)
    return joblib.hash((repr(body), config, state))


class ModuleByContent:
    """Pickles as ``module``, with its tensors as numpy arrays of their bytes.

    Pickling a tensor the usual way writes its storage with ``torch.save``'s
    legacy format, which names the storage by its memory address
    (``storage._cdata``): ``joblib.hash`` of equal copies of a module differs.
    Here the module pickles as a copy of itself in which each plain parameter
    and buffer stands as its bytes, dtype, shape, device and ``requires_grad``,
    so equal modules hash alike. The copy goes to the caller's pickler, so
    ``joblib.hash`` treats it as any object (it does not memoise strings,
    which equal copies share differently). Unpickling gives the module itself,
    tied parameters still tied; other tensors (uninitialised lazy parameters)
    pickle as usual.
    """

    def __init__(self, module):
        self.module = module

    def __reduce__(self):
        tensors = (*self.module.parameters(), *self.module.buffers())
        memo = {id(t): _TensorContent(t) for t in tensors if _plain_tensor(t)}
        return _same, (copy.deepcopy(self.module, memo),)


def _same(obj):
    return obj


def _plain_tensor(t):
    plain = type(t) in (torch.Tensor, nn.Parameter) and t.layout == torch.strided
    return plain and not (t.is_quantized or t.is_meta)


class _TensorContent:
    """Stands for ``tensor`` in a copy to pickle; unpickles as a tensor alike."""

    def __init__(self, tensor):
        self.tensor = tensor

    def __reduce__(self):
        t = self.tensor
        data = t.detach().cpu().reshape(-1).view(torch.uint8).numpy()
        content = (t.dtype, tuple(t.shape), str(t.device), t.requires_grad)
        return _tensor_from_content, (data, *content, type(t) is nn.Parameter)


def _tensor_from_content(data, dtype, shape, device, requires_grad, parameter):
    tensor = torch.from_numpy(np.array(data)).view(dtype).reshape(shape).to(device)
    if parameter:
        return nn.Parameter(tensor, requires_grad=requires_grad)
    return tensor.requires_grad_(requires_grad)


def data_key(X):
    """What identifies input data in a cache key: the array, or the files as they are."""
    if isinstance(X, ImagePaths):  # files rewritten in place must not hit the cache
        return [file_stamp(path) for path in X]
    return X


# The frozen outputs of the inputs predicted last by models with ``memory``:
# in a search, every candidate scores the same validation folds.
_RECENT = OrderedDict()
_RECENT_LOCK = threading.Lock()
RECENT_MAX_BYTES = 256 * 2**20


def recent_pass(body, X, cut, source, batch_size, device, precision, channels_last):
    """What the blocks below ``cut`` of ``body`` give for ``X``, kept in process.

    The activations entering block ``cut``, or the pooled features when
    ``cut`` is past the last block. ``source`` is the :func:`weights_key` of
    the frozen blocks as they were before fitting: blocks below ``cut`` never
    train, so models with the same backbone share the result. For each input,
    outputs at several cuts are kept, and a higher cut continues from the
    closest lower one. Inputs seen least recently go first once the outputs
    take more than ``RECENT_MAX_BYTES``.
    """
    key = joblib.hash((source, batch_size, precision, channels_last, data_key(X)))
    with _RECENT_LOCK:
        entry = _RECENT.pop(key, {})
        _RECENT[key] = entry
        stored = entry.get(cut)
        lower = max((k for k in entry if k < cut), default=None)
        start = None if lower is None else (lower, None, entry[lower])
    if stored is not None:
        return stored
    options = (batch_size, device, precision, channels_last)
    pooled, activations = frozen_pass(body, X, cut, *options, start=start, pooled=False)
    stored = pooled if cut == len(body.blocks) else activations
    with _RECENT_LOCK:
        entry[cut] = stored
        size = sum(a.nbytes for e in _RECENT.values() for a in e.values())
        while size > RECENT_MAX_BYTES and len(_RECENT) > 1:
            size -= sum(a.nbytes for a in _RECENT.popitem(last=False)[1].values())
    return stored


class BackboneMixin:
    """Input checks and backbone loading for estimators with ``backbone``/``weights``."""

    def __getstate__(self):
        # joblib.hash pickles estimators (Pipeline(memory=...), searches): a
        # module backbone pickles by content, so equal copies hash alike.
        state = dict(super().__getstate__())
        if isinstance(state.get("backbone"), nn.Module):
            state["backbone"] = ModuleByContent(state["backbone"])
        return state

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
