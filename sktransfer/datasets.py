"""Synthetic classification tasks that share structure, for transfer experiments."""

import numpy as np
from sklearn.utils import check_random_state


def make_transfer_classification(
    classes,
    n_per_class,
    *,
    n_classes=25,
    n_latent=10,
    n_signal=24,
    n_nuisance=72,
    nuisance_scale=2.5,
    task_seed=0,
    random_state=None,
):
    """Sample classes of one family of related classification tasks.

    Every class is a prototype in an ``n_latent``-dimensional space. A sample
    jitters its class prototype and passes it through a fixed two-layer tanh
    map into ``n_signal`` observed features; ``n_nuisance`` features of larger
    variance that carry no class information sit beside them. The prototypes
    and maps depend only on ``task_seed``, so disjoint sets of ``classes`` are
    different tasks over the same structure: a network trained on some classes
    has learnt which directions of the input matter for the others.

    Parameters
    ----------
    classes : sequence of int
        Class indices in ``[0, n_classes)`` to sample.
    n_per_class : int
        Samples per class.
    n_classes : int, default=25
        Number of classes of the family.
    n_latent : int, default=10
        Dimension of the class prototypes.
    n_signal : int, default=24
        Number of features that carry class information.
    n_nuisance : int, default=72
        Number of features that do not.
    nuisance_scale : float, default=2.5
        Scale of the nuisance features.
    task_seed : int, default=0
        Seed of the prototypes and maps shared by all tasks of the family.
    random_state : int, RandomState instance or None, default=None
        Seed of the samples.

    Returns
    -------
    X : ndarray of shape (len(classes) * n_per_class, n_signal + n_nuisance)
        Features, float32, in random order.
    y : ndarray of shape (len(classes) * n_per_class,)
        The class index of each sample, taken from ``classes``.

    Examples
    --------
    >>> from sktransfer.datasets import make_transfer_classification
    >>> X, y = make_transfer_classification([20, 21], 3, random_state=0)
    >>> X.shape, sorted(set(y.tolist()))
    ((6, 96), [20, 21])
    """
    classes = np.asarray(classes)
    if classes.ndim != 1 or classes.size == 0 or classes.min() < 0 or classes.max() >= n_classes:
        raise ValueError(f"classes={classes.tolist()} must be indices in [0, {n_classes}).")
    if n_per_class < 1:
        raise ValueError(f"n_per_class={n_per_class} must be at least 1.")
    world = np.random.RandomState(task_seed)
    prototypes = 1.8 * world.standard_normal((n_classes, n_latent))
    hidden = 2 * n_signal
    map1 = world.standard_normal((n_latent, hidden)) / np.sqrt(n_latent)
    map2 = world.standard_normal((hidden, n_signal)) / np.sqrt(hidden)
    n_style = n_signal
    style_map = world.standard_normal((n_style, n_nuisance)) / np.sqrt(n_style)

    rng = check_random_state(random_state)
    y = np.repeat(classes, n_per_class)
    latent = prototypes[y] + 0.5 * rng.standard_normal((y.size, n_latent))
    signal = np.tanh(np.tanh(latent @ map1) @ map2)
    nuisance = nuisance_scale * np.tanh(rng.standard_normal((y.size, n_style)) @ style_map)
    X = np.hstack([signal, nuisance]) + 0.05 * rng.standard_normal((y.size, n_signal + n_nuisance))
    order = rng.permutation(y.size)
    return X[order].astype(np.float32), y[order]
