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

from . import backbones
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


def draw_seeds(random_state, n):
    """``n`` seeds for torch drawn from ``random_state``, one per random stream."""
    rng = check_random_state(random_state)
    return [int(seed) for seed in rng.randint(np.iinfo(np.int32).max, size=n)]


# torch's global generator is one per process: seeding it, restoring it and
# building a model (module constructors and ``reset_parameters`` draw from
# it, and take no generator) hold this lock, so that fits in threads neither
# reseed nor draw from each other's stream while a model is built.
_RNG_LOCK = threading.RLock()


@contextmanager
def torch_seed(seed):
    """Seed torch's global generator with ``seed``; the caller's state comes back after.

    What still draws from the global generator while a model trains (dropout,
    stochastic depth) follows ``seed`` in a fit that runs alone; fits running
    at once in threads share that generator.
    """
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    fork = torch.random.fork_rng(devices=cuda)
    with _RNG_LOCK:
        fork.__enter__()
        torch.manual_seed(seed)
    try:
        yield
    finally:
        with _RNG_LOCK:
            fork.__exit__(None, None, None)


@contextmanager
def seeded_build(seed):
    """Run a model build alone in the process, its random draws seeded by ``seed``."""
    with _RNG_LOCK, torch_seed(seed):
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


def _fitted_attributes(estimator):
    return {k: v for k, v in vars(estimator).items() if k.endswith("_") and not k.startswith("__")}


class BackboneMixin:
    """Input checks and backbone loading for estimators with ``backbone``/``weights``."""

    @contextmanager
    def _fitting(self):
        """A fit that raises leaves the fitted attributes as they were before it:
        absent after a first fit, the previous model's after a refit."""
        before = _fitted_attributes(self)
        try:
            yield
        except BaseException:
            for name in _fitted_attributes(self):
                delattr(self, name)
            vars(self).update(before)
            raise

    def _input_kind(self):
        return backbones.input_kind(self.backbone)

    def __getstate__(self):
        # joblib.hash pickles estimators (Pipeline(memory=...), searches): a
        # module backbone pickles by content, so equal copies hash alike.
        state = dict(super().__getstate__())
        if isinstance(state.get("backbone"), nn.Module):
            state["backbone"] = ModuleByContent(state["backbone"])
        return state

    def _check_input(self, X, reset):
        if self._input_kind() == "images":
            if reset:
                forget_feature_count(self)
            return check_images(X, self.backbone)
        X = check_module_input(self, X, reset=reset)
        fitted = getattr(self, "_input_shape_", None)  # None in pickles from before
        if not reset and fitted is not None and X.shape[1:] != fitted:
            raise ValueError(
                f"X has shape {X.shape}, but {type(self).__name__} was fitted on "
                f"input of shape (n_samples, {', '.join(map(str, fitted))}); the "
                f"backbone module takes input of that shape."
            )
        return X

    def _module_input_shape(self, X):
        """What fit records of checked ``X`` for a module: its shape after the
        sample axis, which predictions must have too; None for named backbones."""
        return None if self._input_kind() == "images" else X.shape[1:]

    def _check_common_params(self):
        if self._input_kind() != "images" and self.input_size is not None:
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
        body = backbones.build(
            self.backbone,
            self.weights,
            self.input_size,
            lambda: first_batch(X, None),
            check_n_blocks,
        )
        if self.channels_last:
            body.to(memory_format=torch.channels_last)
        return body

    def _pass_options(self):
        """The arguments of :func:`frozen_pass` and :func:`embed` after ``device``."""
        return self.batch_size, self.device, self.precision, self.channels_last
