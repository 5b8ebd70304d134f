"""What every family of named backbones shares: the spec, checkpoints, the build.

A family turns a name into a :class:`BackboneSpec`; :func:`build_body` turns
a spec and ``weights`` into a :class:`~sktransfer._modules.Body`: the
architecture built, its ordered blocks taken out, the pretrained weights
loaded (the original classifier left out), the pooling and preprocessing
attached.
"""

import copy
import copyreg
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .._input import file_stamp
from .._modules import Body, ImagePreprocess


@dataclass(frozen=True)
class Weights:
    """Pretrained weights resolved by a family.

    ``source`` identifies them (an enum member's name, or a file as it is
    now, see :func:`file_stamp`); ``load()`` returns the state dict in the
    layout of the architecture; ``meta`` is what the family's preprocessing
    needs to know of them (e.g. a torchvision weights enum member).
    """

    source: object
    load: Callable[[], Mapping]
    meta: object = None


@dataclass(frozen=True)
class BackboneSpec:
    """One named backbone, as its family describes it.

    Attributes
    ----------
    name : str
        The name as the user wrote it (``"resnet18"``, ``"timm:convnext_atto"``).
    input_kind : str
        What the backbone takes: ``"images"`` or ``"text"``.
    build_model : callable
        ``build_model()`` returns the architecture, randomly initialised,
        with its original classifier.
    blocks : callable
        ``blocks(model)`` returns the ordered blocks, input to output; called
        before weights load, it must leave ``model`` as it is.
    head_prefixes : tuple of str
        State-dict key prefixes of the original classifier, which is dropped.
    resolve_weights : callable
        ``resolve_weights(weights)`` returns a :class:`Weights`, or None for
        ``weights=None``; it raises ValueError for weights it does not know.
    preprocessing : callable
        ``preprocessing(model, resolved, max_length)`` returns ``size``, ``mean``, ``std``
        and ``interpolation`` for the resolved weights (None: those the
        pretrained weights would have, so that pretrained and scratch see the
        same input), or a preprocessing module of its own (a tokenizer's
        :class:`~sktransfer._modules.TextPreprocess`) with a ``sample()`` batch.
        ``max_length`` is the estimator's limit of tokens per text (None: the
        model's own); image families ignore it (the estimators refuse it for
        them).
    pool : callable or None
        ``pool(model)``, called once the weights are loaded, returns the
        module from the last block's output to ``(n, d)`` features; None
        averages feature maps globally.
    activations : object or None
        How the frozen-feature cache keeps the activations between blocks
        where they have one length per batch (text): an object with
        ``split(activations, dtype)``, one batch to a list of per-sample
        arrays, and ``collate(arrays)``, such a list to a batch. None: one
        shape for every sample, kept as one array.
    """

    name: str
    input_kind: str
    build_model: Callable[[], nn.Module]
    blocks: Callable[[nn.Module], list]
    head_prefixes: tuple
    resolve_weights: Callable[[object], Optional[Weights]]
    preprocessing: Callable[[nn.Module, Optional[Weights]], dict]
    pool: Optional[Callable[[nn.Module], nn.Module]] = None
    activations: object = None


def read_checkpoint(path):
    """Load a state dict from ``path`` with ``weights_only=True``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for unreadable files
        raise ValueError(
            f"weights={path!r} could not be read as a PyTorch state dict "
            f"({type(exc).__name__}: {exc}). Pass a file written by "
            f"torch.save(model.state_dict(), path)."
        ) from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(
            f"weights={path!r} does not hold a state dict (a mapping of names to "
            f"tensors) but a {type(state).__name__}. Pass a file written by "
            f"torch.save(model.state_dict(), path)."
        )
    return state


def checkpoint_weights(path, transform=None):
    """:class:`Weights` read from the state-dict file ``path`` (renamed by ``transform``)."""

    def load():
        state = read_checkpoint(path)
        return state if transform is None else transform(state)

    return Weights(source=file_stamp(path), load=load)


def load_strict(model, state, what, ignore_prefixes=()):
    """Load ``state`` into ``model``; only keys under ``ignore_prefixes`` may differ."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ValueError(f"weights={what!r} does not fit the backbone: {exc}") from exc
    missing = [k for k in missing if not k.startswith(ignore_prefixes)]
    if missing or unexpected:
        raise ValueError(
            f"weights={what!r} does not fit the backbone: "
            f"{len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}."
        )


# Values a copy of a module shares with the original, as ``copy.deepcopy`` would.
_IMMUTABLE = frozenset((type(None), bool, int, float, str, torch.dtype, torch.device))
_EMPTY_CONTAINERS = (dict, OrderedDict, set)
_PLAIN_CLASSES = weakref.WeakKeyDictionary()  # class: whether copy_module may rebuild it


def _immutable_tuple(value):
    """Whether ``value`` is a tuple of immutable values (a convolution's sizes)."""
    return type(value) is tuple and all(type(v) in _IMMUTABLE for v in value)


def _plain(cls):
    """Whether ``cls`` pickles and copies as ``nn.Module`` does (its methods
    checked once; ``copyreg``, where one may register it later, each time)."""
    plain = _PLAIN_CLASSES.get(cls)
    if plain is None:
        plain = _PLAIN_CLASSES[cls] = (
            getattr(cls, "__deepcopy__", None) is None
            and cls.__reduce_ex__ is object.__reduce_ex__
            and cls.__reduce__ is object.__reduce__
            and cls.__getstate__ is nn.Module.__getstate__
        )
    return plain and cls not in copyreg.dispatch_table


def copy_module(module, memo=None):
    """``copy.deepcopy(module)``, in about a third of the time for a torch model.

    ``deepcopy`` reduces and rebuilds every object of every submodule, the
    empty hook dictionaries included. Here each submodule is rebuilt from its
    ``__getstate__`` directly: parameters and buffers are deep-copied
    (:func:`_copy_tensor`; tied ones stay tied), submodules copied the same
    way, empty dictionaries and sets made anew (one shared stays shared),
    immutable values shared, anything else deep-copied. A module that pickles
    or copies itself otherwise (its class's methods, its own
    ``__deepcopy__``, a ``copyreg`` entry) is deep-copied. The original must
    not change while it is copied (``memo`` holds ids of its objects).
    """
    memo = {} if memo is None else memo
    found = memo.get(id(module))
    if found is not None:
        return found
    cls = type(module)
    if not _plain(cls) or "__deepcopy__" in module.__dict__:
        return copy.deepcopy(module, memo)
    new = cls.__new__(cls)
    memo[id(module)] = new
    state = module.__getstate__()
    for name, value in state.items():
        kind = type(value)
        if kind in _IMMUTABLE:
            continue
        if name == "_modules":
            state[name] = kind(
                (k, None if m is None else copy_module(m, memo)) for k, m in value.items()
            )
        elif name == "_parameters" or name == "_buffers":
            state[name] = kind(
                (k, None if t is None else _copy_tensor(t, memo)) for k, t in value.items()
            )
        elif kind in _EMPTY_CONTAINERS and not value:
            found = memo.get(id(value))
            if found is None:
                found = memo[id(value)] = kind()
            state[name] = found
        elif not _immutable_tuple(value):
            state[name] = copy.deepcopy(value, memo)
    new.__setstate__(state)
    return new


def _copy_tensor(tensor, memo):
    """``copy.deepcopy(tensor, memo)``; a tensor or parameter of torch's own
    class without the dispatch of ``copy.deepcopy`` (its ``__deepcopy__``
    keeps the memo itself)."""
    found = memo.get(id(tensor))
    if found is not None:
        return found
    if type(tensor) in _TENSOR_CLASSES:
        return tensor.__deepcopy__(memo)
    return copy.deepcopy(tensor, memo)


_TENSOR_CLASSES = frozenset((torch.Tensor, nn.Parameter))


class PristineStore:
    """Bodies built lately with pretrained weights, as loaded, locked for threads.

    The next fit with the same backbone, weights and input size (a search's
    next candidate) copies one instead of building the model and reading its
    weights again.
    """

    def __init__(self, max_items=2):
        self.max_items = max_items
        self._items = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return copy_module(self._items[key])

    def put(self, key, body):
        with self._lock:
            self._items[key] = copy_module(body)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def __len__(self):
        return len(self._items)

    def clear(self):
        with self._lock:
            self._items.clear()


PRISTINE = PristineStore()


def build_body(
    spec, weights, input_size, check_n_blocks=None, max_length=None, channels_last=False
):
    """Build ``spec`` as a :class:`Body`, weights loaded, output size known.

    ``input_size`` (images) and ``max_length`` (text) are the estimator's
    preprocessing options, None for the weights' or the model's own. With
    ``channels_last``, 4-D weights are in ``torch.channels_last`` memory
    format (kept so: the next fit copies them as they are).

    ``check_n_blocks(n_blocks)`` runs before any weights are read. The body's
    ``source`` identifies its pretrained weights (None for ``weights=None``).
    """
    resolved = spec.resolve_weights(weights)
    key = None
    if resolved is not None:
        key = (spec.name, resolved.source, input_size, max_length, channels_last)
    body = None if key is None else PRISTINE.get(key)
    if body is not None:
        if check_n_blocks is not None:
            check_n_blocks(len(body.blocks))
        return body
    model = spec.build_model()
    blocks = spec.blocks(model)
    if check_n_blocks is not None:
        check_n_blocks(len(blocks))
    if resolved is not None:
        what = weights if isinstance(weights, str) else str(resolved.source)
        load_strict(model, resolved.load(), what, spec.head_prefixes)
    preprocess = spec.preprocessing(model, resolved, max_length)
    if not isinstance(preprocess, nn.Module):
        preprocess["size"] = input_size or preprocess["size"]
        preprocess = ImagePreprocess(**preprocess)
    pool = None if spec.pool is None else spec.pool(model)
    body = Body(blocks, preprocess=preprocess, pool=pool, activations=spec.activations)
    body.infer_output_dim(preprocess.sample())
    body.eval()  # as pretrained models are used; a fit sets the modes it trains in
    if channels_last:
        body.to(memory_format=torch.channels_last)
    if key is not None:
        body.source = (spec.name, resolved.source)
        body.architecture = repr(body)  # for weights_key, once (copies share it)
        PRISTINE.put(key, body)
    return body
