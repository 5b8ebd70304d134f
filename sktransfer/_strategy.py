"""Training strategies: what trains in a phase of ``fit``, at which learning rates.

A strategy answers, for a :class:`~sktransfer._modules.Body`:

- ``cut(n_blocks)``: the first block that trains; blocks below it never do,
  so their outputs can be computed once (the frozen-feature cache);
- ``apply(body)``: set ``requires_grad`` on every backbone parameter and
  return the optimizer parameter groups of the backbone parameters that
  train (the head's group is the optimizer's first);
- ``kept_in_eval(body)``: the modules that stay in eval mode while the net
  trains;
- ``phase``: its name in ``history_``.

The pooling module (``body.pool``) counts as part of the top block. A second
way to fine-tune (adapters, say) is a second class with the same four
answers; the recipe, ``TransferModule.train`` and the cache ask, never assume.
"""

from torch import nn

from ._freeze import block_param_groups, modules_kept_in_eval, set_trainable


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
        body.requires_grad_(False)
        return []

    def kept_in_eval(self, body):
        return [body]


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


class Scratch:
    """Every parameter trains from the first epoch, at the head's ``lr``;
    BatchNorm trains too."""

    phase = "scratch"

    def cut(self, n_blocks):
        return 0

    def apply(self, body):
        body.requires_grad_(True)
        return []  # in the optimizer's first group, with the head, from the start

    def kept_in_eval(self, body):
        return []
