import gzip

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from sktransfer import FineTunedClassifier, clear_cache, datasets

# The test networks are tiny: one thread is faster than two, and keeps the
# suite fast when another process shares the two cores. BLAS too: the linear
# probe's LogisticRegression on two BLAS threads and one free core is many
# times slower than on one.
torch.set_num_threads(1)
threadpool_limits(1)


def make_mlp(n_in=None, widths=(16, 12, 8), bn=False):
    """An nn.Sequential of blocks, each a Linear (+BatchNorm) + ReLU."""
    blocks, prev = [], n_in
    for width in widths:
        linear = nn.LazyLinear(width) if prev is None else nn.Linear(prev, width)
        layers = [linear] + ([nn.BatchNorm1d(width)] if bn else []) + [nn.ReLU()]
        blocks.append(nn.Sequential(*layers))
        prev = width
    return nn.Sequential(*blocks)


def make_cnn():
    """A tiny CNN of three blocks with BatchNorm, for (n, 3, H, W) input."""
    torch.manual_seed(0)

    def block(c_in, c_out):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())

    return nn.Sequential(block(3, 4), block(4, 8), block(8, 8))


def small_search_classifier(**params):
    """The classifier the tests of parallel searches search: an MLP of three
    blocks on 6 features, its head warmed up from random weights."""
    torch.manual_seed(0)
    return FineTunedClassifier(
        backbone=make_mlp(n_in=6),
        warmup="epochs",
        lr=1e-2,
        max_epochs=3,
        batch_size=8,
        random_state=0,
        **params,
    )


# Two depths at two rates, and the from-scratch baseline.
SMALL_SEARCH_GRID = [{"unfreeze_depth": [2, 0], "backbone_lr": [1e-3, 1e-2]}, {"weights": [None]}]


def count_bottom_batches(monkeypatch, family):
    """Record every batch the bottom block of each body ``family.build_body``
    builds (the fitted copies) runs on."""
    build, calls = family.build_body, []

    def counting_build(*args, **kwargs):
        body = build(*args, **kwargs)
        body.blocks[0].register_forward_hook(lambda *args: calls.append(1))
        return body

    monkeypatch.setattr(family, "build_body", counting_build)
    return calls


def write_fake_fashion_mnist(folder):
    """Tiny idx files in Fashion-MNIST's format: 8 training and 2 test images a class."""
    rng = np.random.RandomState(0)
    for split, n in (("train", 8), ("test", 2)):
        images, labels = datasets._IDX_FILES[split]
        y = np.repeat(np.arange(10, dtype=np.uint8), n)
        X = rng.randint(0, 40, size=(len(y), 28, 28)).astype(np.uint8)
        X[np.arange(len(y)), y, :] = 255  # a class-dependent stripe
        with gzip.open(folder / images, "wb") as f:
            f.write(bytes(16) + X.tobytes())
        with gzip.open(folder / labels, "wb") as f:
            f.write(bytes(8) + y.tobytes())


@pytest.fixture(autouse=True)
def _fresh_backbones():
    """Each test loads its own weights and computes its own frozen outputs: no
    body or predicted input kept from another test."""
    clear_cache()


@pytest.fixture
def vectors():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(60, 6)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    return X, y


@pytest.fixture
def images():
    """Twelve 3-class uint8 images, (n, H, W, 3), classes told apart by colour."""
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1, 2], 4)
    X = rng.randint(0, 60, size=(12, 20, 20, 3)).astype(np.uint8)
    X[np.arange(12), :, :, y] += 150
    return X, y
