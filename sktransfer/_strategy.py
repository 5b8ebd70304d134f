"""Training strategies: what trains in a phase of ``fit``, at which learning rates.

A strategy answers, for a :class:`~sktransfer._modules.Body`:

- ``cut(n_blocks)``: the first block that trains; blocks below it never do,
  so their outputs can be computed once (the frozen-feature cache);
- ``apply(body)``: set ``requires_grad`` on every backbone parameter and
  return the optimizer parameter groups of the backbone parameters that
  train (the head's group is the optimizer's first);
- ``kept_in_eval(body)``: the modules that stay in eval mode while the net
  trains;
- ``phase``: its name in ``history_``;
- ``finish(body)``: what becomes of the body once ``fit`` has trained it
  (nothing, except for :class:`LoRA`, which merges its adapters).

The pooling module (``body.pool``) counts as part of the top block. A second
way to fine-tune is a second class with the same answers (:class:`LoRA`);
the recipe, ``TransferModule.train`` and the cache ask, never assume.
"""

import re

from torch import nn

from ._base import seeded_build
from ._freeze import block_param_groups, modules_kept_in_eval, requires_grad, set_trainable


def _units(body):
    """The blocks, the pooling module joined to the top one."""
    *below, top = body.blocks
    return [*below, nn.ModuleList([top, body.pool])]


class Frozen:
    """Nothing in the backbone trains: the head alone (the warm-up)."""

    phase = "warmup"

    def cut(self, n_blocks):
        return n_blocks

    def apply(self, body):
        requires_grad(body, False)
        return []

    def kept_in_eval(self, body):
        return [body]

    def finish(self, body):
        pass


class UnfreezeTop:
    """The top ``depth`` blocks train, the block ``k`` places below the top at
    ``backbone_lr * layer_decay ** k``; BatchNorm stays frozen and in eval
    unless ``train_bn``."""

    phase = "finetune"

    def __init__(self, depth, backbone_lr, layer_decay=1.0, train_bn=False):
        self.depth = depth
        self.backbone_lr = backbone_lr
        self.layer_decay = layer_decay
        self.train_bn = train_bn

    def cut(self, n_blocks):
        return n_blocks - self.depth

    def apply(self, body):
        units = _units(body)
        set_trainable(units, self.depth, self.train_bn)
        return block_param_groups(units, self.depth, self.backbone_lr, self.layer_decay)

    def kept_in_eval(self, body):
        return list(modules_kept_in_eval(_units(body), self.depth, self.train_bn))

    def finish(self, body):
        pass


class Scratch:
    """Every parameter trains from the first epoch, at the head's ``lr``;
    BatchNorm trains too."""

    phase = "scratch"

    def cut(self, n_blocks):
        return 0

    def apply(self, body):
        requires_grad(body, True)
        return []  # in the optimizer's first group, with the head, from the start

    def kept_in_eval(self, body):
        return []

    def finish(self, body):
        pass


def _peft():
    """peft, or an ImportError that says how to install it."""
    try:
        import peft
    except ImportError as exc:
        raise ImportError(
            'strategy="lora" needs peft, which is not installed; '
            'pip install "sktransfer[lora]" installs it.'
        ) from exc
    return peft


def _is_adapter(module):
    """Whether ``module`` is a layer peft put in place of a layer it adapts."""
    _peft()
    from peft.tuners.tuners_utils import BaseTunerLayer

    return isinstance(module, BaseTunerLayer)


def _lora_layers(module):
    """The LoRA layers peft put in ``module``."""
    _peft()
    from peft.tuners.lora import LoraLayer

    return [m for m in module.modules() if isinstance(m, LoraLayer)]


def adaptable_layers(module):
    """Names and layers in ``module`` that :class:`LoRA` adapts.

    ``nn.Linear`` layers and ``nn.Conv2d`` layers with a 1x1 kernel and one
    group; not the layers of existing adapters, nor the projections of an
    ``nn.MultiheadAttention`` (which uses their weights without calling them).
    """
    found = []
    _visit_adaptable(module, "", found)
    return found


def _visit_adaptable(parent, prefix, found):
    # A function of the module, not a closure calling itself (a reference
    # cycle, which would hold the layers found until a collection).
    for name, child in parent.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, nn.Linear):
            if not isinstance(parent, nn.MultiheadAttention):
                found.append((full, child))
        elif isinstance(child, nn.Conv2d):
            if tuple(child.kernel_size) == (1, 1) and child.groups == 1:
                found.append((full, child))
        elif not _is_adapter(child):  # an adapter's layers are its own
            _visit_adaptable(child, f"{full}.", found)


def _subtrees_without(module, excluded):
    """The largest submodules of ``module`` (itself included) that hold none of
    the modules whose ids are in ``excluded``."""
    if not any(id(m) in excluded for m in module.modules()):
        return [module]
    out = []
    for child in module.children():
        if id(child) not in excluded:
            out.extend(_subtrees_without(child, excluded))
    return out


def merge_adapters(module):
    """Merge every LoRA layer in ``module`` into its layer's weights and put that
    layer back in its place: plain torch modules, computing what the adapted
    ones did."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if _is_adapter(child):
                child.merge()
                setattr(parent, name, child.get_base_layer())


class LoRA:
    """Low-rank adapters (peft's LoRA) on the ``nn.Linear`` and 1x1
    ``nn.Conv2d`` layers of the top ``depth`` blocks train, those of the block
    ``k`` places below the top at ``backbone_lr * layer_decay ** k``; every
    backbone parameter stays frozen and every backbone module in eval mode
    (but the adapters' dropout). ``finish`` merges the adapters into the
    weights.

    The adapters start as peft starts them (the second factor at zero: the
    model is unchanged), their random draws seeded by ``seed``.
    """

    phase = "finetune"

    def __init__(
        self, depth, backbone_lr, layer_decay=1.0, rank=8, alpha=16.0, dropout=0.0, seed=0
    ):
        self.depth = depth
        self.backbone_lr = backbone_lr
        self.layer_decay = layer_decay
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.seed = seed

    def cut(self, n_blocks):
        return n_blocks - self.depth

    def _top(self, body):
        units = _units(body)
        return nn.ModuleList(units[len(units) - self.depth :] if self.depth else [])

    def targets(self, body):
        """Names (in the top blocks) of the layers that get adapters."""
        return [name for name, _ in adaptable_layers(self._top(body))]

    def apply(self, body):
        top = self._top(body)
        names = self.targets(body)
        if names:
            peft = _peft()
            config = peft.LoraConfig(
                r=self.rank,
                lora_alpha=self.alpha,
                lora_dropout=self.dropout,
                # A str is matched against whole names (a list, against their ends).
                target_modules="|".join(re.escape(name) for name in names),
            )
            # Into a container of the top blocks, which the layers are replaced
            # in; peft's own attributes stay on the container.
            with seeded_build(self.seed):
                peft.inject_adapter_in_model(config, top)
        requires_grad(body, False)
        for layer in _lora_layers(body):
            layer.lora_A.requires_grad_(True)
            layer.lora_B.requires_grad_(True)
        return block_param_groups(_units(body), self.depth, self.backbone_lr, self.layer_decay)

    def kept_in_eval(self, body):
        if not self.depth:
            return [body]
        dropouts = {
            id(d)
            for layer in _lora_layers(body)
            for d in layer.lora_dropout.values()
            if not isinstance(d, nn.Identity)
        }
        return _subtrees_without(body, dropouts)

    def finish(self, body):
        merge_adapters(body)
