"""Freezing and learning rates as small functions over an ordered list of blocks.

Block ``i`` of ``n`` is trainable when ``i >= n - depth``: ``depth`` counts
blocks from the top (output side) of the backbone.

A fit walks its backbone (a few hundred modules) a dozen times; the walks
here (:func:`submodules`, :func:`parameters_of`, :func:`set_modes`) give what
``nn.Module``'s do, in the same order, without its generator per module: a
few times faster. They follow each module's ``_modules``, as torch's walks do
(:func:`set_modes` leaves a module that walks its children otherwise to its
own ``train``).
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


def submodules(module):
    """``list(module.modules())``: each module once, in the same order."""
    found = [module]
    _visit(module, found, {id(module)})
    return found


def _visit(parent, found, seen):
    # A function of the module, not a closure: a closure that calls itself
    # is a reference cycle, and would hold ``found`` until a collection.
    for child in parent._modules.values():
        if child is not None and id(child) not in seen:
            seen.add(id(child))
            found.append(child)
            _visit(child, found, seen)


def parameters_of(module):
    """``list(module.parameters())``: each parameter once, in the same order."""
    return _tensors_of(submodules(module), "_parameters")


def tensors_of(module):
    """``[*module.parameters(), *module.buffers()]``, from one walk."""
    modules = submodules(module)
    return _tensors_of(modules, "_parameters") + _tensors_of(modules, "_buffers")


def _tensors_of(modules, kind):
    found, seen = [], set()
    for m in modules:
        for t in getattr(m, kind).values():
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                found.append(t)
    return found


def set_modes(module, mode, kept=()):
    """``module.train(mode)``, then ``k.eval()`` for each ``k`` of ``kept`` where
    ``mode``: each module's ``training`` set in one flat walk.

    Returns False, having changed nothing, where that would not be the same:
    where a module below ``module`` has a ``train`` or ``children`` of its
    own (see :func:`trains_as_module`), a module of ``kept`` an ``eval`` of
    its own, or any a ``__setattr__`` of its own. The caller then calls the
    methods. (Modules are told apart by identity, as torch's walks do unless
    a class defines ``__eq__`` and ``__hash__`` by value.)
    """
    if not isinstance(mode, bool):  # nn.Module.train says why
        return False
    kept = list(kept) if mode else []
    modules = submodules(module)
    below = [m for k in kept for m in submodules(k)]
    if not (
        _sets_as_module(module)
        and trains_as_module(modules[1:])
        and trains_as_module(below)
        and all(type(k).eval is nn.Module.eval for k in kept)
    ):
        return False
    for m in modules:
        object.__setattr__(m, "training", mode)
    for m in below:
        object.__setattr__(m, "training", False)
    return True


# The train() methods that do what nn.Module.train does (others add theirs).
MODULE_TRAIN = {nn.Module.train}


def trains_as_module(modules):
    """Whether ``train(mode)`` on each of ``modules`` does what
    ``nn.Module.train`` does, as :func:`set_modes` does it: its class's
    ``train`` is in :data:`MODULE_TRAIN` (and no ``train`` set on the module
    itself), its ``children`` and ``__setattr__`` are nn.Module's."""
    return all(
        type(m).train in MODULE_TRAIN
        and type(m).children is nn.Module.children
        and "train" not in m.__dict__
        and _sets_as_module(m)
        for m in modules
    )


def _sets_as_module(module):
    # nn.Module.__setattr__ sets ``training`` (never a submodule, parameter
    # or buffer: torch refuses those names) as object.__setattr__ does.
    return type(module).__setattr__ is nn.Module.__setattr__


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
        for module in submodules(block):
            keep = trainable and (train_bn or not isinstance(module, _BATCH_NORM))
            for param in module._parameters.values():
                if param is not None:
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
            yield from (m for m in submodules(block) if isinstance(m, _BATCH_NORM))


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
    return sum(p.numel() for p in parameters_of(module) if p.requires_grad)


def requires_grad(module, value):
    """``module.requires_grad_(value)``."""
    for param in parameters_of(module):
        param.requires_grad_(value)
