"""GridSearchCV over the recipe with the frozen-feature cache off and on.

``efficientnet_lite0`` (ImageNet weights) fine-tuned on Fashion-MNIST images
at 64 px, ``unfreeze_depth`` {0, 1, 2} x ``backbone_lr`` {1e-4, 1e-3}, cv=3,
the same ``random_state``, the default linear-probe warm-up and
``--warmup-epochs`` head-only epochs of ``--epochs``. Off:
``frozen_cache=False``, every batch of every epoch runs the whole network.
On: the default in-fit cache plus ``memory=`` (a ``joblib.Memory`` in a fresh
temporary folder each repeat), so candidates on the same fold share the
frozen blocks' outputs, the linear probe and the warm-up, in training and in
scoring, and folds share the samples they have in common. Each search starts
from ``sktransfer.clear_cache()``: no outputs kept in process by the search
before, and the weights read again (once per search, on and off alike).

One row per order of the depths (ascending, descending) and number of torch
threads (``--threads``, 1 and 2 by default: a search with ``n_jobs=1`` on
two cores). BLAS stays on one thread throughout: the linear probe's
``LogisticRegression`` is small, and more BLAS threads wait on each other.
Each row times both searches ``--repeats`` times, alternating; the speed-up
is the ratio of the medians. The two searches must choose the same
``best_params_`` (asserted); the largest difference of mean CV scores is
printed. The 1-minute load average is recorded at the end of each row.
``--clock process`` times this process's CPU seconds instead of wall
seconds: less disturbed by other work on a shared machine, but on 2 threads
it counts both threads' time, waiting included.

The search without the cache depends on the memory allocator: with glibc's
defaults each of its steps gives the early blocks' activations back to the
kernel and faults them in again. Run it as
``MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824 python
benchmarks/search_cache.py`` to time it without that (the header prints the
``MALLOC_*`` settings in force).

    python benchmarks/search_cache.py [--repeats 3] [--n-per-class 24] [--epochs 5]
                                      [--clock {wall,process}]

Prints a table and writes ``search_cache.csv``.
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from _table import print_table, write_csv
from threadpoolctl import threadpool_limits

from sktransfer import FineTunedClassifier, clear_cache
from sktransfer.datasets import fetch_fashion_mnist

ORDERS = {"ascending": [0, 1, 2], "descending": [2, 1, 0]}
CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
clock = CLOCKS["wall"]


def sample(X, y, n_per_class, seed=0):
    rng = np.random.RandomState(seed)
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), n_per_class, replace=False) for c in np.unique(y)]
    )
    return X[idx], y[idx]


def search(X, y, *, cache, depths, epochs, warmup_epochs):
    from sklearn.model_selection import GridSearchCV

    grid = {"unfreeze_depth": depths, "backbone_lr": [1e-4, 1e-3]}
    with tempfile.TemporaryDirectory() as folder:
        clf = FineTunedClassifier(
            backbone="efficientnet_lite0",
            input_size=64,
            max_epochs=epochs,
            warmup_epochs=warmup_epochs,
            random_state=0,
            frozen_cache=cache,
            memory=folder if cache else None,
        )
        clear_cache()  # nothing kept in process from the search before
        start = clock()
        result = GridSearchCV(clf, grid, cv=3).fit(X, y)
        return clock() - start, result


def compare(X, y, *, order, threads, epochs, warmup_epochs, repeats):
    """Both searches ``repeats`` times, alternating; one row of the table."""
    torch.set_num_threads(threads)
    times, results = {"off": [], "on": []}, {}
    for repeat in range(repeats):
        for name in ("off", "on"):  # alternate, so noise hits both alike
            seconds, results[name] = search(
                X,
                y,
                cache=name == "on",
                depths=ORDERS[order],
                epochs=epochs,
                warmup_epochs=warmup_epochs,
            )
            times[name].append(seconds)
            print(
                f"{order}, {threads} thread(s), repeat {repeat}: cache {name} {seconds:.1f} s",
                flush=True,
            )
    off, on = results["off"], results["on"]
    assert off.best_params_ == on.best_params_, (off.best_params_, on.best_params_)
    max_diff = float(
        np.abs(off.cv_results_["mean_test_score"] - on.cv_results_["mean_test_score"]).max()
    )
    median_off, median_on = statistics.median(times["off"]), statistics.median(times["on"])
    clock_name = "process" if clock is CLOCKS["process"] else "wall"
    return {
        "depths": order,
        "threads": threads,
        "clock": clock_name,
        "n_images": len(y),
        "epochs": f"{warmup_epochs}+{epochs - warmup_epochs}",
        "median_off_s": round(median_off, 1),
        "median_on_s": round(median_on, 1),
        "speedup": round(median_off / median_on, 2),
        "same_best_params": True,
        "max_score_diff": max_diff,
        "best_params": on.best_params_,
        "load_1min": round(os.getloadavg()[0], 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-per-class", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--orders", nargs="+", choices=list(ORDERS), default=list(ORDERS))
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall")
    parser.add_argument("--csv", default="search_cache.csv")
    args = parser.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    threadpool_limits(1)  # BLAS: see the docstring
    X_train, y_train, _, _ = fetch_fashion_mnist()
    X, y = sample(X_train, y_train, args.n_per_class)
    # Imports and the first read of the weights file, out of the first row's timings.
    FineTunedClassifier(backbone="efficientnet_lite0", input_size=64, unfreeze_depth=0).fit(X, y)
    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")} or "none"
    print(
        f"{len(y)} images, 64 px, 6 candidates x cv=3, {args.warmup_epochs} warm-up epochs "
        f"of {args.epochs}; load average {os.getloadavg()[0]:.1f}; MALLOC_* settings {malloc}",
        flush=True,
    )
    rows = [
        compare(
            X,
            y,
            order=order,
            threads=threads,
            epochs=args.epochs,
            warmup_epochs=args.warmup_epochs,
            repeats=args.repeats,
        )
        for order in args.orders
        for threads in args.threads
    ]
    print_table(rows)
    write_csv(rows, args.csv)


if __name__ == "__main__":
    main()
