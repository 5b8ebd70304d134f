"""GridSearchCV over the recipe with the frozen-feature cache off and on.

``efficientnet_lite0`` (ImageNet weights) fine-tuned on Fashion-MNIST images
at 64 px, ``unfreeze_depth`` in {2, 1, 0} x ``backbone_lr`` in {1e-4, 1e-3},
cv=3, the same ``random_state``, the default linear-probe warm-up and one
head-only epoch. Off: ``frozen_cache=False``, every batch of every epoch runs
the whole network. On: the default in-fit cache plus ``memory=`` (a
``joblib.Memory`` in a fresh temporary folder each repeat), so candidates on
the same fold share the frozen blocks' outputs, in training and in scoring.
Timed in one run, alternating, median of ``--repeats``, for each number of
``--epochs``; the two searches must agree.

    python benchmarks/search_cache.py [--repeats 3] [--n-per-class 20] [--epochs 5 10 20]

Prints a table and writes ``search_cache.csv``.
"""

import argparse
import statistics
import tempfile
import time

import numpy as np
from _table import write_csv

from sktransfer import FineTunedClassifier
from sktransfer.datasets import fetch_fashion_mnist

# Deepest cut first: the shallower ones continue its stored pass.
GRID = {"unfreeze_depth": [2, 1, 0], "backbone_lr": [1e-4, 1e-3]}


def sample(X, y, n_per_class, seed=0):
    rng = np.random.RandomState(seed)
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), n_per_class, replace=False) for c in np.unique(y)]
    )
    return X[idx], y[idx]


def search(X, y, *, cache, epochs, n_jobs):
    from sklearn.model_selection import GridSearchCV

    with tempfile.TemporaryDirectory() as folder:
        clf = FineTunedClassifier(
            backbone="efficientnet_lite0",
            input_size=64,
            max_epochs=epochs,
            warmup_epochs=1,
            random_state=0,
            frozen_cache=cache,
            memory=folder if cache else None,
        )
        start = time.perf_counter()
        result = GridSearchCV(clf, GRID, cv=3, n_jobs=n_jobs).fit(X, y)
        return time.perf_counter() - start, result


def compare(X, y, epochs, repeats, n_jobs):
    """Both searches ``repeats`` times, alternating; one row of the table."""
    times, results = {"off": [], "on": []}, {}
    for repeat in range(repeats):
        for name in ("off", "on"):  # alternate, so noise hits both alike
            seconds, results[name] = search(X, y, cache=name == "on", epochs=epochs, n_jobs=n_jobs)
            times[name].append(seconds)
            print(f"{epochs} epochs, repeat {repeat}: cache {name} {seconds:.1f} s", flush=True)
    off, on = results["off"], results["on"]
    max_diff = float(
        np.abs(off.cv_results_["mean_test_score"] - on.cv_results_["mean_test_score"]).max()
    )
    return {
        "n_images": len(y),
        "epochs": epochs,
        "median_off_s": round(statistics.median(times["off"]), 1),
        "median_on_s": round(statistics.median(times["on"]), 1),
        "speedup": round(statistics.median(times["off"]) / statistics.median(times["on"]), 2),
        "same_best_params": off.best_params_ == on.best_params_,
        "max_score_diff": max_diff,
        "best_params": on.best_params_,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-per-class", type=int, default=20)
    parser.add_argument("--epochs", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--csv", default="search_cache.csv")
    args = parser.parse_args(argv)
    X_train, y_train, _, _ = fetch_fashion_mnist()
    X, y = sample(X_train, y_train, args.n_per_class)
    print(f"{len(y)} images, 64 px, 6 candidates x cv=3, epochs {args.epochs}", flush=True)
    rows = [compare(X, y, epochs, args.repeats, args.n_jobs) for epochs in args.epochs]
    print()
    columns = list(rows[0])
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    write_csv(rows, args.csv)


if __name__ == "__main__":
    main()
