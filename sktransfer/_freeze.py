"""Freezing and learning rates as small functions over an ordered list of blocks.

Block ``i`` of ``n`` is trainable when ``i >= n - depth``: ``depth`` counts
blocks from the top (output side) of the backbone.
"""

from torch import nn

_BATCH_NORM = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LazyBatchNorm1d,
    nn.LazyBatchNorm2d,
    nn.LazyBatchNorm3d,
    nn.SyncBatchNorm,
)


def _is_trainable_block(index, n_blocks, depth):
    return index >= n_blocks - depth


def set_trainable(blocks, depth, train_bn):
    """Set ``requires_grad`` on every backbone parameter for ``depth``.

    Parameters of the top ``depth`` blocks train, except BatchNorm affine
    parameters when ``train_bn`` is False; every other parameter is frozen.
    """
    n_blocks = len(blocks)
    for index, block in enumerate(blocks):
        trainable = _is_trainable_block(index, n_blocks, depth)
        for module in block.modules():
            keep = trainable and (train_bn or not isinstance(module, _BATCH_NORM))
            for param in module.parameters(recurse=False):
                param.requires_grad_(bool(keep))


def modules_kept_in_eval(blocks, depth, train_bn):
    """Yield the modules that stay in eval mode while the net trains.

    Frozen blocks as a whole (their dropout and BatchNorm statistics do not
    move), and the BatchNorm layers of trainable blocks unless ``train_bn``.
    """
    n_blocks = len(blocks)
    for index, block in enumerate(blocks):
        if not _is_trainable_block(index, n_blocks, depth):
            yield block
        elif not train_bn:
            yield from (m for m in block.modules() if isinstance(m, _BATCH_NORM))


def block_param_groups(blocks, depth, backbone_lr, layer_decay):
    """Optimizer parameter groups of the top ``depth`` blocks.

    The block ``k`` places below the top (``k = 0`` for the top block) gets
    ``backbone_lr * layer_decay ** k``. Frozen parameters are left out.
    """
    n_blocks = len(blocks)
    groups = []
    for k in range(depth):
        index = n_blocks - 1 - k
        params = [p for p in blocks[index].parameters() if p.requires_grad]
        if params:
            groups.append(
                {"params": params, "lr": backbone_lr * layer_decay**k, "name": f"blocks.{index}"}
            )
    return groups


def count_trainable(module):
    """Number of scalar parameters of ``module`` that require a gradient."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
