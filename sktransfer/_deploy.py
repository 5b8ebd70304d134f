"""Saving fitted models in a form that runs no code when loaded.

A fitted model becomes three things (:func:`describe`): a description of
plain values (the estimator's class and parameters, what ``fit`` learned,
the backbone's architecture by name and its preprocessing), its weights as
a flat mapping of names to tensors, and for a text backbone the files of its
tokenizer and configuration. :func:`rebuild` builds the model again from
them: the architecture from the backbone registry (randomly initialised, no
download), or from the module the caller passes for a backbone that was a
module; then the weights load strictly, which checks the architecture.

:func:`save` writes them to a folder (``model.json``, ``weights.pt``,
``backbone/``) and :func:`load` reads them back with ``json`` and
``torch.load(weights_only=True)``. The estimators' pickled state is the same
three things (see ``BackboneMixin.__getstate__``), so that ``skops.io`` (and
MLflow's default format) loads a fitted model trusting only sktransfer's
estimator classes.
"""

import copy
import json
import os
import pathlib
import tempfile
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from . import backbones
from ._base import cuda_missing, seeded_build, warn_loaded_on_cpu
from ._modules import Body, ImagePreprocess, TextPreprocess, TransferModule

FORMAT = "sktransfer-model"
VERSION = 1
DESCRIPTION_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
BACKBONE_FOLDER = "backbone"
# The files of a text backbone that are kept: its configuration and the
# tokenizer files the text family reads, those that are JSON or plain text
# (no pickles, no code, no binary tokenizer models).
_TEXT_FILES = tuple(
    name
    for name in ("config.json", *backbones.hf.TOKENIZER_FILES)
    if name.endswith((".json", ".txt"))
)
# Fitted attributes that are rebuilt rather than kept.
_REBUILT = ("net_", "backbone_")
# Identifies pretrained weights as loaded, for the frozen-output cache; a
# loaded model's weights are its own, so it starts without one.
_NOT_KEPT = ("_frozen_source_",)


def _estimator_classes():
    from ._extractor import PretrainedFeatureExtractor
    from ._finetune import FineTunedClassifier

    return {cls.__name__: cls for cls in (FineTunedClassifier, PretrainedFeatureExtractor)}


# --- Plain values -----------------------------------------------------------------


def _plain(value, what):
    """``value`` as JSON-able data; tuples and arrays tagged so they come back alike."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        return _plain(value.item(), what)
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        return float(value)
    if isinstance(value, np.ndarray):
        return {"__ndarray__": _plain(value.tolist(), what), "dtype": value.dtype.str}
    if isinstance(value, tuple):
        return {"__tuple__": [_plain(v, what) for v in value]}
    if isinstance(value, list):
        return [_plain(v, what) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, what) for k, v in value.items()}
    raise TypeError(f"{what} holds a {type(value).__name__}, which is not a plain value")


def _unplain(value):
    if isinstance(value, list):
        return [_unplain(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__ndarray__", "dtype"}:
            dtype = np.dtype(value["dtype"])
            if dtype.hasobject and dtype.kind != "O":
                raise ValueError(f"dtype {dtype} is not a plain array dtype")
            return np.array(_unplain(value["__ndarray__"]), dtype=dtype)
        if set(value) == {"__tuple__"}:
            return tuple(_unplain(v) for v in value["__tuple__"])
        return {k: _unplain(v) for k, v in value.items()}
    return value


def _unplain_params(params):
    """The parameters :func:`_plain_params` wrote, weights enums, paths and devices again."""
    from torchvision.models import get_weight

    params = _unplain(params)
    for name, value in params.items():
        if isinstance(value, dict) and set(value) == {"__weights_enum__"}:
            params[name] = get_weight(value["__weights_enum__"])
        elif isinstance(value, dict) and set(value) == {"__path__"}:
            params[name] = pathlib.Path(value["__path__"])
        elif isinstance(value, dict) and set(value) == {"__device__"}:
            params[name] = torch.device(value["__device__"])
    return params


def _plain_params(estimator):
    """The parameters as plain values; an error for those that are not."""
    from torchvision.models import WeightsEnum

    params = {}
    for name, value in estimator.get_params(deep=False).items():
        if name == "backbone" and isinstance(value, nn.Module):
            params[name] = None  # the caller passes the module again at load
            continue
        if name == "weights" and isinstance(value, WeightsEnum):
            params[name] = {"__weights_enum__": f"{type(value).__name__}.{value.name}"}
            continue
        if name == "weights" and isinstance(value, os.PathLike):
            params[name] = {"__path__": os.fspath(value)}
            continue
        if name == "device" and isinstance(value, torch.device):
            params[name] = {"__device__": str(value)}
            continue
        try:
            params[name] = _plain(value, f"{name}={value!r}")
        except TypeError as exc:
            hint = {
                "memory": "use memory=None (for a model to serve) or a folder path",
                "optimizer": "use one of 'adam', 'adamw', 'sgd' (it only matters to a refit)",
                "random_state": "use an int or None",
            }.get(name, "use a plain value (None, bool, int, float or str)")
            raise ValueError(
                f"{name}={value!r} is not a plain value and cannot be saved; {hint}: "
                f"model.set_params({name}=...) before saving."
            ) from exc
    return params


# --- Description ------------------------------------------------------------------


def _body_and_module(estimator):
    if hasattr(estimator, "net_"):
        module = estimator.net_.module_
        return module.body, module
    return estimator.backbone_, estimator.backbone_


def _preprocess_description(preprocess):
    if isinstance(preprocess, ImagePreprocess):
        return {
            "kind": "images",
            "size": preprocess.size,
            "interpolation": preprocess.interpolation,
            "mean": preprocess.mean.flatten().tolist(),
            "std": preprocess.std.flatten().tolist(),
        }
    if isinstance(preprocess, TextPreprocess):
        return {"kind": "text", "max_length": preprocess.max_length, "source": preprocess.source}
    if isinstance(preprocess, nn.Identity):
        return {"kind": "none"}
    raise TypeError(f"preprocessing {type(preprocess).__name__} cannot be described")


def _pool_description(pool):
    from .backbones.hf import TextPool

    if isinstance(pool, TextPool):
        return {"mode": pool.mode, "normalize": bool(pool.normalize)}
    return {}


def _text_files(body):
    """The tokenizer's and the model configuration's files, as bytes by file name."""
    config = next((getattr(b, "config", None) for b in body.blocks[1:]), None)
    if config is None:
        raise ValueError("a text backbone without transformer layers cannot be saved")
    with tempfile.TemporaryDirectory() as folder:
        config.save_pretrained(folder)
        body.preprocess.tokenizer.save_pretrained(folder)
        paths = {name: pathlib.Path(folder, name) for name in _TEXT_FILES}
        return {name: path.read_bytes() for name, path in paths.items() if path.is_file()}


def describe(estimator):
    """A fitted estimator as ``(description, tensors, files)``.

    ``description`` is JSON-able; ``tensors`` maps names to CPU tensors (the
    weights, state-dict keys prefixed by ``"module."``); ``files`` maps file
    names to bytes (a text backbone's tokenizer and configuration).
    """
    if type(estimator) not in _estimator_classes().values():
        raise TypeError(
            f"sktransfer saves FineTunedClassifier and PretrainedFeatureExtractor models; "
            f"got a {type(estimator).__name__}."
        )
    check_is_fitted(estimator)
    body, module = _body_and_module(estimator)
    named = not isinstance(estimator.backbone, nn.Module)
    fitted = {}
    for name, value in vars(estimator).items():
        if not name.endswith("_") or name.startswith("__") or name in _REBUILT + _NOT_KEPT:
            continue
        try:
            fitted[name] = _plain(value, name)
        except TypeError as exc:
            raise ValueError(f"the fitted attribute {name} cannot be saved: {exc}.") from exc
    description = {
        "format": FORMAT,
        "version": VERSION,
        "estimator": type(estimator).__name__,
        "params": _plain_params(estimator),
        "fitted": fitted,
        "backbone": {
            "named": named,
            "n_blocks": len(body.blocks),
            "output_dim": int(body.output_dim),
            "preprocess": _preprocess_description(body.preprocess),
            "pool": _pool_description(body.pool),
        },
    }
    if hasattr(estimator, "net_"):
        description["net_history"] = _plain(list(estimator.net_.history), "net_.history")
    state = module.state_dict()
    tensors = {f"module.{k}": v.detach().cpu().clone() for k, v in state.items()}
    files = _text_files(body) if description["backbone"]["preprocess"]["kind"] == "text" else {}
    return description, tensors, files


# --- Rebuild ----------------------------------------------------------------------


def _check_description(description):
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise ValueError(f"this is not a model saved by sktransfer.save (no {FORMAT!r} format).")
    if description.get("version") != VERSION:
        raise ValueError(
            f"this model was saved in format version {description.get('version')!r}; this "
            f"sktransfer reads version {VERSION}."
        )
    name = description.get("estimator")
    classes = _estimator_classes()
    if name not in classes:
        raise ValueError(f"estimator={name!r} is not one of {sorted(classes)}.")
    return classes[name]


def _named_body(arch, params, files):
    """The architecture of a named backbone, randomly initialised, as its registry builds it."""
    preprocess = arch["preprocess"]
    kind = backbones.named_spec(params["backbone"]).input_kind
    if kind != preprocess["kind"]:
        raise ValueError(
            f"backbone={params['backbone']!r} takes {kind}, but the saved model's "
            f"preprocessing is for {preprocess['kind']}: the description is not one "
            f"sktransfer.save writes."
        )
    with tempfile.TemporaryDirectory() as folder:
        if preprocess["kind"] == "text":
            for name, content in files.items():
                if name not in _TEXT_FILES:
                    raise ValueError(f"backbone file {name!r} is not one sktransfer writes.")
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(content)
            spec = backbones.named_spec(backbones.hf.PREFIX + folder)
        else:
            spec = backbones.named_spec(params["backbone"])
        with seeded_build(0):
            model = spec.build_model()
        blocks = spec.blocks(model)
        pool = None if spec.pool is None else spec.pool(model)
        if preprocess["kind"] == "text":
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
            module = TextPreprocess(tokenizer, preprocess["max_length"], preprocess["source"])
        else:
            module = ImagePreprocess(
                preprocess["size"],
                preprocess["mean"],
                preprocess["std"],
                preprocess["interpolation"],
            )
    for key, value in arch["pool"].items():
        setattr(pool, key, value)
    return Body(blocks, preprocess=module, pool=pool, activations=spec.activations)


def _module_body(backbone, arch):
    if not isinstance(backbone, nn.Sequential):
        raise ValueError(
            f"backbone={backbone!r}: this model was fitted with a backbone module; pass the "
            f"same architecture as an nn.Sequential: load(path, backbone=module)."
        )
    if len(backbone) != arch["n_blocks"]:
        raise ValueError(
            f"backbone has {len(backbone)} blocks, but the saved model's has "
            f"{arch['n_blocks']}; pass the architecture the model was fitted with."
        )
    return Body(list(copy.deepcopy(backbone).children()))


def rebuild(description, tensors, files=None, backbone=None):
    """The fitted estimator that :func:`describe` described."""
    cls = _check_description(description)
    params, arch = _unplain_params(description["params"]), description["backbone"]
    if cuda_missing(params.get("device") or "cpu"):
        warn_loaded_on_cpu(cls.__name__, params["device"])
        params["device"] = "cpu"
    if arch["named"]:
        if backbone is not None:
            raise ValueError(
                f"backbone={type(backbone).__name__}: this model's backbone is "
                f"{params['backbone']!r}, rebuilt by name; load it with backbone=None."
            )
        body = _named_body(arch, params, files or {})
    else:
        body = _module_body(backbone, arch)
        params["backbone"] = backbone
    try:
        estimator = cls(**params)
    except TypeError as exc:
        raise ValueError(f"the saved parameters do not fit {cls.__name__}: {exc}.") from exc
    from ._compat import validate_params

    validate_params(estimator)
    body.output_dim = arch["output_dim"]
    fitted = _unplain(description["fitted"])
    state = _state_dict(tensors)
    if cls.__name__ == "FineTunedClassifier":
        # The body first: lazy layers of a module take their shapes from it.
        body_state = {k[5:]: v for k, v in state.items() if k.startswith("body.")}
        _load_weights(body, body_state, backbone)
        module = _classifier_module(body, len(fitted["classes_"]))
    else:
        module = body
    _load_weights(module, state, backbone)
    vars(estimator).update(fitted)
    vars(estimator).update(dict.fromkeys(_NOT_KEPT))
    if estimator._channels_last():  # as the fit built it
        body.to(memory_format=torch.channels_last)
    if cls.__name__ == "FineTunedClassifier":
        estimator.net_ = _classifier_net(estimator, module, description.get("net_history", []))
    else:
        body.requires_grad_(False)
        estimator.backbone_ = body.eval().to(estimator.device)
    return estimator


def _classifier_module(body, n_classes):
    from ._strategy import Frozen

    generator = torch.Generator().manual_seed(0)  # overwritten by the saved weights
    return TransferModule(body, n_classes, Frozen(), generator=generator)


def _classifier_net(estimator, module, history):
    from skorch.history import History

    from ._finetune import _Recipe
    from ._strategy import Frozen

    net = estimator._make_net(module, _Recipe(Frozen(), {}), 0, 0)
    net.initialize()
    net.optimizer_ = None  # as a pickled model: weights, not optimizer state
    net.module = net.module_
    net.history = History(_unplain(history))
    net.module_.to(estimator.device).eval()
    return net


def _state_dict(tensors):
    prefix = "module."
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if len(state) != len(tensors):
        raise ValueError("the saved weights hold keys sktransfer does not write.")
    return state


def _load_weights(module, state, backbone):
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        what = "the backbone module passed" if backbone is not None else "the rebuilt backbone"
        raise ValueError(f"the saved weights do not fit {what}: {exc}") from exc


# --- skops and MLflow --------------------------------------------------------------

#: The types a file of a fitted sktransfer model holds beyond those ``skops.io``
#: trusts by default: the estimator classes, whose pickled state is plain
#: values (see :func:`plain_state`). Pass them as ``trusted`` to
#: ``skops.io.load`` or as ``skops_trusted_types`` to ``mlflow.sklearn``.
SKOPS_TRUSTED_TYPES = [
    "sktransfer._finetune.FineTunedClassifier",
    "sktransfer._extractor.PretrainedFeatureExtractor",
]


def pip_requirements():
    """Pinned pip requirements of sktransfer's core dependencies that run a model.

    MLflow infers a model's requirements from the modules its loading
    imports, then leaves out the packages that an inferred package requires:
    it writes ``sktransfer``, not ``torch``, ``torchvision`` or ``skorch``.
    Pass this list as ``extra_pip_requirements`` to ``mlflow.sklearn.save_model``
    or ``log_model`` to pin the versions the model was saved with.

    Returns
    -------
    requirements : list of str
        ``"torch==<version>"``, ``"torchvision==<version>"`` and
        ``"skorch==<version>"``, as installed (local version labels such as
        ``+cpu`` left out).

    Examples
    --------
    >>> import sktransfer
    >>> [r.split("==")[0] for r in sktransfer.pip_requirements()]
    ['torch', 'torchvision', 'skorch']
    """
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "torchvision", "skorch")]


# --- Pickled state -----------------------------------------------------------------

STATE_KEY = "_sktransfer_model"


def plain_state(estimator):
    """What a fitted estimator with a named backbone pickles as: plain values only.

    The description as a JSON str, each tensor as its bytes (a uint8 array),
    dtype name and shape, the backbone files as bytes. None where the
    estimator pickles as usual: not fitted, a backbone module (pickled by
    content), or a parameter that is not a plain value (a ``joblib.Memory``).
    """
    if type(estimator) not in _estimator_classes().values():
        return None  # a subclass may hold state of its own
    if not (hasattr(estimator, "net_") or hasattr(estimator, "backbone_")):
        return None
    if isinstance(estimator.backbone, nn.Module):
        return None
    try:
        description, tensors, files = describe(estimator)
    except (ValueError, TypeError):  # a value that is not plain: pickled as usual
        return None
    arrays = {
        name: [t.contiguous().reshape(-1).view(torch.uint8).numpy(), str(t.dtype), list(t.shape)]
        for name, t in tensors.items()
    }
    return {"description": json.dumps(description), "tensors": arrays, "files": files}


def from_plain_state(state):
    """The attributes of the estimator :func:`plain_state` described."""
    files = state.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, bytes) for k, v in files.items()
    ):
        raise ValueError("the pickled model's backbone files are not a mapping of names to bytes.")
    tensors = {}
    for name, (data, dtype, shape) in state["tensors"].items():
        dtype = getattr(torch, str(dtype).removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"tensor {name!r} has no torch dtype.")
        data = torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8))
        tensors[name] = data.view(dtype).reshape(shape).clone()
    estimator = rebuild(json.loads(state["description"]), tensors, files)
    return vars(estimator)


# --- Files ------------------------------------------------------------------------


def save(model, path):
    """Save a fitted sktransfer model to the folder ``path``, in a form that runs no code
    when loaded.

    The folder holds ``model.json`` (the estimator's class, parameters and
    fitted attributes, the backbone's architecture by name and its
    preprocessing), ``weights.pt`` (a mapping of names to tensors, written
    by ``torch.save``) and, for a text backbone, ``backbone/`` (its
    tokenizer's and configuration's JSON and text files). :func:`load`
    reads it back.

    Parameters
    ----------
    model : FineTunedClassifier or PretrainedFeatureExtractor
        A fitted model. A backbone given as an ``nn.Sequential`` is not
        saved, only its weights: :func:`load` takes the module again.
    path : str or path-like
        Folder to write to; created if needed, its files of the same names
        overwritten.

    Raises
    ------
    ValueError
        For a parameter that is not a plain value (a ``joblib.Memory``, an
        optimizer class, a ``RandomState``): the message says which value to
        set instead. A torchvision weights enum member is saved by its name
        and a path as a str, which the estimators take alike.

    See Also
    --------
    load : Load a model saved by :func:`save`.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from torch import nn
    >>> import sktransfer
    >>> X = np.random.RandomState(0).normal(size=(20, 4)).astype(np.float32)
    >>> y = (X[:, 0] > 0).astype(int)
    >>> backbone = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    >>> clf = sktransfer.FineTunedClassifier(backbone=backbone, max_epochs=2,
    ...                                      random_state=0).fit(X, y)
    >>> folder = tempfile.mkdtemp()
    >>> sktransfer.save(clf, folder)
    >>> loaded = sktransfer.load(folder, backbone=backbone)
    >>> bool((loaded.predict_proba(X) == clf.predict_proba(X)).all())
    True
    """
    description, tensors, files = describe(model)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, DESCRIPTION_FILE), "w", encoding="utf-8") as f:
        json.dump(description, f, indent=1)
    torch.save(tensors, os.path.join(path, WEIGHTS_FILE))
    if files:
        os.makedirs(os.path.join(path, BACKBONE_FOLDER), exist_ok=True)
        for name, content in files.items():
            with open(os.path.join(path, BACKBONE_FOLDER, name), "wb") as f:
                f.write(content)


def load(path, backbone=None):
    """Load a model saved by :func:`save`; nothing in the folder runs as code.

    ``model.json`` is read as JSON and ``weights.pt`` with
    ``torch.load(weights_only=True)``, which reads tensors and plain
    containers only and refuses anything else. A named backbone's
    architecture is built from sktransfer's registry, randomly initialised,
    with no download; a text backbone's configuration and tokenizer come
    from the saved JSON and text files (``trust_remote_code=False``). The
    weights then load strictly: every saved tensor must fit the architecture.

    Parameters
    ----------
    path : str or path-like
        Folder written by :func:`save`.
    backbone : torch.nn.Sequential or None, default=None
        For a model fitted with a backbone module: the same architecture
        (its weights do not matter, the saved ones replace them in a copy);
        it becomes the loaded model's ``backbone`` parameter. None for a
        named backbone.

    Returns
    -------
    model : FineTunedClassifier or PretrainedFeatureExtractor
        The fitted model, predicting what the saved one did.

    Raises
    ------
    ValueError
        For a file that is not what :func:`save` writes (a pickle with code
        in ``weights.pt``, keys or values of the wrong kind), or a backbone
        module whose architecture does not fit the saved weights.
    """
    try:
        with open(os.path.join(path, DESCRIPTION_FILE), encoding="utf-8") as f:
            description = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"path={os.fspath(path)!r} holds no {DESCRIPTION_FILE} written by "
            f"sktransfer.save ({type(exc).__name__}: {exc})."
        ) from exc
    _check_description(description)
    weights = os.path.join(path, WEIGHTS_FILE)
    try:
        tensors = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for files it refuses
        # torch's message on a refused pickle ends with what it refused.
        reason = str(exc).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0]
        reason = reason.split(". Please use")[0]  # not the advice to allow it
        raise ValueError(
            f"{weights!r} is not a file of tensors written by sktransfer.save and was not "
            f"loaded ({type(exc).__name__}: {reason[:300]})."
        ) from exc
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
    ):
        raise ValueError(f"{weights!r} does not hold a mapping of names to tensors.")
    folder = os.path.join(path, BACKBONE_FOLDER)
    files = {}
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as f:
                files[name] = f.read()
    return rebuild(description, tensors, files, backbone)
