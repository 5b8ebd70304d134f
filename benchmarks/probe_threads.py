"""The linear probe on BLAS's default threads against one BLAS thread.

NumPy's and SciPy's wheels each bring an OpenBLAS of their own. The linear
probe's ``LogisticRegression`` (L-BFGS) alternates between them, and the
threads of each spin for a while after its work. Two rows per sample count:
the probe's time with BLAS as it is (default: one thread per core) and under
``threadpool_limits(1, user_api="blas")``, median of ``--repeats``
alternating repeats, on synthetic 1280-dimensional features of 10 classes.

A last pair of rows times what the spinning threads do to torch after the
probe: the first fine-tuning epoch of an EfficientNet-Lite0 fit at 64 px on
160 Fashion-MNIST images (``unfreeze_depth=2``, 2 torch threads), its
warm-up read from ``memory`` so that only the probe run just before it
differs.

    python benchmarks/probe_threads.py [--repeats 3]

Prints a table and writes ``probe_threads.csv``.
"""

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from _table import print_table, write_csv
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_info, threadpool_limits

from sktransfer import FineTunedClassifier
from sktransfer.datasets import fetch_fashion_mnist

SETTINGS = ("default", "1 BLAS thread")


def features(n, seed=0):
    rng = np.random.RandomState(seed)
    y = rng.randint(0, 10, n)
    X = np.abs(rng.randn(n, 1280)).astype(np.float32)
    X += 0.5 * (np.arange(1280) % 10 == y[:, None])  # a class signal to find
    return X, y


def probe(X, y, setting):
    if setting == "default":
        return LogisticRegression(max_iter=1000).fit(X, y)
    with threadpool_limits(1, user_api="blas"):
        return LogisticRegression(max_iter=1000).fit(X, y)


def time_probes(n, repeats):
    X, y = features(n)
    times = {s: [] for s in SETTINGS}
    for _ in range(repeats):
        for setting in SETTINGS:
            start = time.perf_counter()
            probe(X, y, setting)
            times[setting].append(time.perf_counter() - start)
    return [
        {"what": f"probe, {n} samples", "blas": s, "median_ms": _ms(times[s])} for s in SETTINGS
    ]


def time_first_epoch(repeats):
    """The first fine-tuning epoch right after a probe in each setting."""
    X, y, _, _ = fetch_fashion_mnist()
    X, y = X[:160], y[:160]
    pooled, labels = features(160)
    times = {s: [] for s in SETTINGS}
    with tempfile.TemporaryDirectory() as folder:

        def fit():
            return FineTunedClassifier(
                backbone="efficientnet_lite0",
                input_size=64,
                unfreeze_depth=2,
                max_epochs=5,
                warmup_epochs=2,
                random_state=0,
                memory=folder,
            ).fit(X, y)

        fit()  # stores the probe and warm-up this benchmark's fits read back
        torch.set_num_threads(2)
        for _ in range(repeats):
            for setting in SETTINGS:
                probe(pooled, labels, setting)
                times[setting].append(fit().history_[2]["dur"])
    return [
        {"what": "first fine-tuning epoch after it", "blas": s, "median_ms": _ms(times[s])}
        for s in SETTINGS
    ]


def _ms(seconds):
    return round(statistics.median(seconds) * 1000, 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 2000, 10000])
    parser.add_argument("--csv", default="probe_threads.csv")
    args = parser.parse_args(argv)
    blas = [(i["filepath"].rsplit("/", 1)[-1], i["num_threads"]) for i in threadpool_info()]
    print(f"thread pools (library, threads): {blas}", flush=True)
    rows = [row for n in args.sizes for row in time_probes(n, args.repeats)]
    rows += time_first_epoch(args.repeats)
    print_table(rows)
    write_csv(rows, args.csv)


if __name__ == "__main__":
    main()
