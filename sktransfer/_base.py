"""What both estimators share: input checks, backbone loading and seeding."""

import copy
import threading
import warnings
from contextlib import contextmanager

import numpy as np
import torch
from sklearn.utils import check_random_state
from torch import nn

from . import backbones
from ._input import (
    check_images,
    check_module_input,
    check_texts,
    first_batch,
    forget_feature_count,
)


def draw_seeds(random_state, n):
    """``n`` seeds for torch drawn from ``random_state``, one per random stream."""
    rng = check_random_state(random_state)
    return [int(seed) for seed in rng.randint(np.iinfo(np.int32).max, size=n)]


# torch's global generator is one per process: seeding it, restoring it and
# building a model (module constructors and ``reset_parameters`` draw from
# it, and take no generator) hold this lock, so that fits in threads neither
# reseed nor draw from each other's stream while a model is built.
_RNG_LOCK = threading.RLock()


def _seed_devices(seed, cuda):
    """``torch.manual_seed(seed)`` for the CPU and the devices the process has.

    ``torch.manual_seed`` also queues the seed for device kinds not started
    (CUDA, XPU, MTIA), recording a stack trace for each call, and those seeds
    would outlive :func:`torch_seed`, which restores only the generators it
    forked. Here the CPU's, every CUDA device's (``cuda``: their indices), and
    MPS's and XPU's where the process has them are seeded, nothing is queued.
    """
    torch.random.default_generator.manual_seed(seed)
    if cuda:
        torch.cuda.manual_seed_all(seed)
    if torch.backends.mps.is_available():
        torch.mps.manual_seed(seed)
    if torch.xpu.is_available():
        torch.xpu.manual_seed_all(seed)


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
        _seed_devices(seed, cuda)
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
    pickle as usual. Each tensor keeps torch's location tag (``"cuda:0"``) and
    loads there, or on the CPU where CUDA is not available, as
    ``torch.load(..., map_location="cpu")`` would.
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
        location = torch.serialization.location_tag(t.untyped_storage())
        content = (t.dtype, tuple(t.shape), location, t.requires_grad)
        return _tensor_from_content, (data, *content, type(t) is nn.Parameter)


def _tensor_from_content(data, dtype, shape, location, requires_grad, parameter):
    tensor = torch.from_numpy(np.array(data)).view(dtype).reshape(shape)
    if not cuda_missing(location):
        tensor = tensor.to(location)
    if parameter:
        return nn.Parameter(tensor, requires_grad=requires_grad)
    return tensor.requires_grad_(requires_grad)


def cuda_missing(device):
    """Whether ``device`` is a CUDA device on a machine where CUDA is not available."""
    return torch.device(device).type == "cuda" and not torch.cuda.is_available()


def warn_loaded_on_cpu(name, device):
    """Warn that a model of class ``name`` fitted on CUDA ``device`` is loaded on the CPU."""
    warnings.warn(
        f"{name} was fitted with device={str(device)!r}, but CUDA is not available on this "
        f"machine: its weights are loaded on the CPU and it predicts there (device='cpu'). "
        f"set_params(device=...) moves the fitted model to another device without refitting.",
        UserWarning,
        stacklevel=3,
    )


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
        # A fitted model with a named backbone pickles as plain values (its
        # description, weights as arrays), which skops loads trusting only
        # the estimator's class: see sktransfer._deploy.
        from ._deploy import STATE_KEY, plain_state

        plain = plain_state(self)
        if plain is not None:
            return {STATE_KEY: plain}
        # joblib.hash pickles estimators (Pipeline(memory=...), searches): a
        # module backbone pickles by content, so equal copies hash alike. Fitted
        # modules too, so that a model fitted on a GPU loads where there is none.
        state = dict(super().__getstate__())
        for name, value in state.items():
            if isinstance(value, nn.Module):
                state[name] = ModuleByContent(value)
        return state

    def __setstate__(self, state):
        # A model fitted on a GPU, loaded where CUDA is not available: its
        # tensors have loaded on the CPU (skorch's and ModuleByContent's), and
        # it predicts there. An unfitted estimator keeps its device, which
        # ``fit`` then checks.
        from ._deploy import STATE_KEY, from_plain_state

        if STATE_KEY in state:  # rebuilt on the CPU where CUDA is missing, see _deploy
            state = from_plain_state(state[STATE_KEY])
        device = state.get("device")
        fitted = any(k.endswith("_") and not k.startswith("__") for k in state)
        if fitted and device is not None and cuda_missing(device):
            warn_loaded_on_cpu(type(self).__name__, device)
            state = {**state, "device": "cpu"}
        super().__setstate__(state)

    def _check_device(self):
        """Raise if ``device`` is not a torch device, or a CUDA one without CUDA."""
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(
                f"device={self.device!r} is not a torch device; use e.g. 'cpu' or 'cuda'."
            ) from exc
        if cuda_missing(device):
            raise ValueError(
                f"device={self.device!r}, but CUDA is not available on this machine "
                f"(torch.cuda.is_available() is False); use device='cpu'."
            )

    def _check_input(self, X, reset):
        kind = self._input_kind()
        if kind in ("images", "text"):
            if reset:
                forget_feature_count(self)
            check = check_images if kind == "images" else check_texts
            return check(X, self.backbone)
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
        return X.shape[1:] if self._input_kind() == "arrays" else None

    def _check_common_params(self):
        kind = self._input_kind()
        if kind != "images" and self.input_size is not None:
            takes = (
                f"backbone={self.backbone!r} takes text, truncated at the model's own limit"
                if kind == "text"
                else "a backbone given as a module takes its input as it is"
            )
            raise ValueError(
                f"input_size={self.input_size!r} only applies to a named image backbone; "
                f"{takes}. Use input_size=None."
            )
        if kind != "text" and self.max_length is not None:
            takes = (
                f"backbone={self.backbone!r} takes images"
                if kind == "images"
                else "a backbone given as a module takes its input as it is"
            )
            raise ValueError(
                f"max_length={self.max_length!r} only applies to a text backbone "
                f"('hf:<model>'); {takes}. Use max_length=None."
            )
        self._check_device()

    def _load_backbone(self, X, check_n_blocks=None):
        """Build the backbone's :class:`Body` with its weights, output size known,
        in the memory format asked for."""
        body = backbones.build(
            self.backbone,
            self.weights,
            self.input_size,
            lambda: first_batch(X, None),
            check_n_blocks,
            max_length=self.max_length,
            channels_last=self._channels_last(),
        )
        return body

    def _channels_last(self):
        """Whether 4-D weights and inputs are channels-last: ``channels_last``,
        where ``"auto"`` means for a named image backbone on a CPU (not for a
        module, whose code may need 4-D tensors contiguous, or hold no 2-D
        convolutions at all)."""
        if isinstance(self.channels_last, str):  # "auto"
            named_images = isinstance(self.backbone, str) and self._input_kind() == "images"
            return named_images and torch.device(self.device).type == "cpu"
        return bool(self.channels_last)

    def _pass_options(self):
        """The pass options of :mod:`sktransfer._cache`: batch size, device,
        precision and channels-last."""
        return self.batch_size, self.device, self.precision, self._channels_last()
