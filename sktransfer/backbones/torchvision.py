"""torchvision's image models by name, with their weights enums.

Weights: a ``torchvision.models`` weights enum member or its name
(``"DEFAULT"``, ``"IMAGENET1K_V1"``), downloaded by torchvision; a path to a
state-dict file in torchvision's layout; or None. Preprocessing follows the
weights' own transforms (those of the default weights for a file or None).
"""

import os
from urllib.error import URLError

from torch import nn

from ._common import BackboneSpec, Weights, checkpoint_weights


def _resnet_blocks(model):
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    return [stem, model.layer1, model.layer2, model.layer3, model.layer4]


def _features_blocks(model):
    return list(model.features.children())


# name -> (the ordered blocks of a model, prefixes of its classifier's keys)
_LAYOUTS = {
    "resnet18": (_resnet_blocks, ("fc.",)),
    "resnet34": (_resnet_blocks, ("fc.",)),
    "resnet50": (_resnet_blocks, ("fc.",)),
    "mobilenet_v3_small": (_features_blocks, ("classifier.",)),
    "mobilenet_v3_large": (_features_blocks, ("classifier.",)),
    "efficientnet_b0": (_features_blocks, ("classifier.",)),
    "efficientnet_b1": (_features_blocks, ("classifier.",)),
}


def names():
    """The names this family lists."""
    return list(_LAYOUTS)


def _weights_enum(name):
    from torchvision.models import get_model_weights

    return get_model_weights(name)


def _download(name, member):
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


def _resolve_weights(name, weights):
    from torchvision.models import WeightsEnum

    enum = _weights_enum(name)
    valid = list(enum.__members__)
    if weights is None:
        return None
    member = None
    if isinstance(weights, WeightsEnum):
        if not isinstance(weights, enum):
            raise ValueError(
                f"weights={weights} belongs to another architecture than "
                f"backbone={name!r}; use one of {enum.__name__}: {valid}."
            )
        member = weights
    elif isinstance(weights, str):
        key = weights.split(".", 1)[1] if weights.startswith(enum.__name__ + ".") else weights
        member = enum.__members__.get(key)
    if member is not None:
        return Weights(source=str(member), load=lambda: _download(name, member), meta=member)
    if isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights):
        return checkpoint_weights(os.fspath(weights))
    raise ValueError(
        f"weights={weights!r} is neither a weights name of backbone={name!r} "
        f"({', '.join(valid)}), None, nor an existing checkpoint file."
    )


def _preprocessing(name, model, resolved):
    # The metadata of the weights in use, or of the default weights of the
    # same architecture, so that pretrained and scratch see the same input.
    member = resolved.meta if resolved is not None and resolved.meta is not None else None
    meta = (member or _weights_enum(name).DEFAULT).transforms()
    return {
        "size": meta.crop_size[0],
        "mean": meta.mean,
        "std": meta.std,
        "interpolation": meta.interpolation.value,
    }


def spec(name):
    """The :class:`BackboneSpec` of a torchvision name, or None for other names."""
    if name not in _LAYOUTS:
        return None
    from torchvision.models import get_model

    blocks, head_prefixes = _LAYOUTS[name]
    return BackboneSpec(
        name=name,
        input_kind="images",
        build_model=lambda: get_model(name, weights=None),
        blocks=blocks,
        head_prefixes=head_prefixes,
        resolve_weights=lambda weights: _resolve_weights(name, weights),
        preprocessing=lambda model, resolved, max_length: _preprocessing(name, model, resolved),
    )
