"""A user's own ``nn.Sequential``: its children are the blocks; it takes arrays as they are."""

import copy
import os

from torch import nn

from .._modules import Body
from ._common import load_strict, read_checkpoint

INPUT_KIND = "arrays"


def reset_parameters(module):
    """Re-initialise every submodule that knows how to (``weights=None``)."""
    for sub in module.modules():
        if hasattr(sub, "reset_parameters") and not isinstance(
            sub, nn.modules.lazy.LazyModuleMixin
        ):
            sub.reset_parameters()


def build_body(module, weights, sample, check_n_blocks=None):
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
        load_strict(model, read_checkpoint(weights), os.fspath(weights))
    return body
