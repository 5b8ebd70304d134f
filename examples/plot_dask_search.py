"""
=======================================
A grid search on a Dask cluster
=======================================

``GridSearchCV`` hands its fits to joblib, and joblib's Dask backend hands
them to the workers of a Dask cluster. Here the cluster is a
``LocalCluster`` of two worker processes with one thread each, on this
machine; a cluster of many machines is used the same way, through its
scheduler's address. The same search of :class:`~sktransfer.FineTunedClassifier`
(EfficientNet-Lite0, Fashion-MNIST, 10 images per class) runs twice: in this
process (``n_jobs=1``) and on the cluster; the candidates' scores and the
chosen parameters are compared.

Everything runs offline on the CPU; it needs ``pip install "sktransfer[dask]"``
(dask and distributed), ``pip install "sktransfer[timm]"`` (timm and the
weights) and ``apt-get install dataset-fashion-mnist`` (the images).
"""

# %%
# The search
# ----------
# Five candidates: the linear probe alone, and the top 3 or 2 blocks
# fine-tuned at two learning rates, under 3-fold cross-validation. Each run gets a
# ``memory`` folder of its own, so that the run on the cluster does not read
# the frozen outputs the first run stored.
#
# Dask starts each worker process with Python's ``spawn`` method, which
# imports this script in the new process before the worker runs. The code
# below ``if __name__ == "__main__":`` runs only where the script is run, so
# the workers do not load the data and search again; in a notebook or an
# interactive session the guard is not needed.
import logging
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from distributed import Client, LocalCluster
from joblib import parallel_backend
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from threadpoolctl import threadpool_limits

from sktransfer import FineTunedClassifier
from sktransfer.datasets import fetch_fashion_mnist

torch.set_num_threads(1)
threadpool_limits(1)  # BLAS too, for the linear probe's logistic regression
clf = FineTunedClassifier(
    backbone="efficientnet_lite0",
    input_size=64,
    lr=1e-5,
    warmup_epochs=0,
    max_epochs=4,
    batch_size=16,
    random_state=0,
)
grid = [
    {"unfreeze_depth": [3, 2], "backbone_lr": [1e-4, 1e-3]},
    {"unfreeze_depth": [0]},
]
cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)


def search(memory):
    """The grid search, with the frozen-feature cache in ``memory``."""
    estimator = clone(clf).set_params(memory=memory)
    return GridSearchCV(estimator, grid, cv=cv, error_score="raise")


# %%
# In this process
# ---------------
if __name__ == "__main__":
    X, y, _, _ = fetch_fashion_mnist()
    train = np.concatenate([np.flatnonzero(y == c)[:10] for c in range(10)])
    X, y = X[train], y[train]
    start = time.perf_counter()
    alone = search(tempfile.mkdtemp(prefix="sktransfer-alone-")).fit(X, y)
    seconds_alone = time.perf_counter() - start
    print(f"n_jobs=1: {seconds_alone:.0f} s, best_params_ {alone.best_params_}")

# %%
# On a Dask cluster of two workers
# --------------------------------
# ``threads_per_worker=1``: each worker process is one torch thread (Dask
# starts its workers with ``OMP_NUM_THREADS=1``). Inside
# ``parallel_backend("dask")``, the search's fits and scores run on the
# workers; the refit of the best candidate runs in this process. Leaving the
# ``with`` block closes the client and the cluster. The time measured on the
# cluster includes each worker's first import of torch and sktransfer, when
# its first fit arrives.
if __name__ == "__main__":
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR
        ) as cluster,
        Client(cluster) as client,
    ):
        print(f"workers: {len(client.scheduler_info()['workers'])}")
        start = time.perf_counter()
        with parallel_backend("dask"):
            on_dask = search(tempfile.mkdtemp(prefix="sktransfer-dask-")).fit(X, y)
        seconds_dask = time.perf_counter() - start
    print(f"on Dask: {seconds_dask:.0f} s, best_params_ {on_dask.best_params_}")
    print(f"same best_params_: {on_dask.best_params_ == alone.best_params_}")

# %%
# The candidates, side by side
# ----------------------------
# Mean accuracy over the three folds and mean fit time of each candidate, in
# each run, and the largest difference between the two runs' scores on any
# fold.
if __name__ == "__main__":
    splits = [f"split{i}_test_score" for i in range(cv.n_splits)]
    largest = max(np.abs(on_dask.cv_results_[s] - alone.cv_results_[s]).max() for s in splits)
    names = [
        f"depth {p['unfreeze_depth']}"
        + (f", backbone_lr {p['backbone_lr']:g}" if "backbone_lr" in p else "")
        for p in alone.cv_results_["params"]
    ]
    table = pd.DataFrame(
        {
            "accuracy, n_jobs=1": alone.cv_results_["mean_test_score"],
            "accuracy, Dask": on_dask.cv_results_["mean_test_score"],
            "fit s, n_jobs=1": alone.cv_results_["mean_fit_time"],
            "fit s, Dask": on_dask.cv_results_["mean_fit_time"],
        },
        index=pd.Index(names, name="candidate"),
    )
    print(table.to_string(float_format="{:.3f}".format))
    print(f"largest difference between the runs' fold scores: {largest:g}")

# %%
# Scores and wall-clock time of the two runs
# ------------------------------------------
# Left: the candidates' mean scores, run by run. Right: each search's time,
# from its start to the end of its refit.
if __name__ == "__main__":
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.5), layout="constrained")
    position = np.arange(len(names))
    left.barh(position - 0.2, table["accuracy, n_jobs=1"], height=0.4, label="n_jobs=1")
    left.barh(position + 0.2, table["accuracy, Dask"], height=0.4, label="Dask, 2 workers")
    left.set_yticks(position, labels=names)
    left.invert_yaxis()
    left.set_xlabel("mean cross-validated accuracy")
    fig.legend(loc="outside lower center", ncols=2)
    right.bar(["n_jobs=1", "Dask, 2 workers"], [seconds_alone, seconds_dask], color=["C0", "C1"])
    right.set_ylabel("search time, s")
    fig.suptitle("GridSearchCV, EfficientNet-Lite0 on Fashion-MNIST, 10 images per class")
    plt.show()
