"""Real images: EfficientNet-Lite0 (ImageNet) on Fashion-MNIST with few labels.

For each number of training images per class and each seed, on the first
``--n-test`` test images:

- fine-tuned, epoch warm-up: ``FineTunedClassifier`` with ``unfreeze_depth``
  0, or one of ``--depths`` ({3, 5} by default) with ``backbone_lr`` in
  {1e-4, 3e-4}, chosen by ``GridSearchCV`` (``--cv`` folds, 3 by default),
  ``warmup="epochs"``: 5 epochs of head training at ``lr=1e-3``, then the top
  blocks;
- fine-tuned, linear probe: the same search with ``warmup="linear_probe"``,
  no head-only epochs, the head at ``lr=1e-5`` (it starts at the probe);
- frozen + logreg: ``PretrainedFeatureExtractor`` then ``LogisticRegression``;
- scratch: the same architecture with ``weights=None``.

Images are resized to ``--input-size`` px. ``--methods`` picks a subset;
``--threads`` sets torch's threads. The searches share one
``joblib.Memory`` per seed and size. Wall times include the searches.

    python benchmarks/fashion_mnist.py [--sizes 10 100] [--seeds 0 1 2] [--methods ...]
                                       [--epochs 15] [--cv 3] [--depths 3 5]

Needs Fashion-MNIST (``apt-get install dataset-fashion-mnist``). Prints a
table and writes ``fashion_mnist.csv``.
"""

import argparse
import tempfile
import time

import numpy as np
import torch
from _table import write_csv
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor
from sktransfer.datasets import fetch_fashion_mnist


def grid(depths):
    """The probe alone, or the top ``depths`` blocks at two backbone learning rates."""
    return [{"unfreeze_depth": [0]}, {"unfreeze_depth": depths, "backbone_lr": [1e-4, 3e-4]}]


METHODS = ("fine-tuned, epoch warm-up", "fine-tuned, linear probe", "frozen + logreg", "scratch")


def sample(y, n_per_class, seed):
    rng = np.random.RandomState(seed)
    return np.concatenate(
        [rng.choice(np.flatnonzero(y == c), n_per_class, replace=False) for c in np.unique(y)]
    )


def models(seed, input_size, epochs, memory, cv, depths):
    common = {"backbone": "efficientnet_lite0", "input_size": input_size, "random_state": seed}
    tuned = {**common, "max_epochs": epochs, "memory": memory}
    epoch_warmup = {"warmup": "epochs", "warmup_epochs": 5, "lr": 1e-3}
    linear_probe = {"warmup": "linear_probe", "warmup_epochs": 0, "lr": 1e-5}
    return {
        METHODS[0]: GridSearchCV(FineTunedClassifier(**epoch_warmup, **tuned), grid(depths), cv=cv),
        METHODS[1]: GridSearchCV(FineTunedClassifier(**linear_probe, **tuned), grid(depths), cv=cv),
        METHODS[2]: make_pipeline(
            PretrainedFeatureExtractor(backbone="efficientnet_lite0", input_size=input_size),
            LogisticRegression(max_iter=2000),
        ),
        METHODS[3]: FineTunedClassifier(weights=None, max_epochs=epochs, **common),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--cv", type=int, default=3)
    parser.add_argument("--depths", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--csv", default="fashion_mnist.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    X_train, y_train, X_test, y_test = fetch_fashion_mnist()
    X_test, y_test = X_test[: args.n_test], y_test[: args.n_test]
    print(
        f"seeds {args.seeds}, {args.input_size} px, {args.epochs} epochs, cv={args.cv}, "
        f"unfreeze_depth 0 or {args.depths}, "
        f"{len(y_test)} test images, {args.threads} torch threads",
        flush=True,
    )
    rows = []
    for n in args.sizes:
        for seed in args.seeds:
            idx = sample(y_train, n, seed)
            with tempfile.TemporaryDirectory() as memory:
                for name, model in models(
                    seed, args.input_size, args.epochs, memory, args.cv, args.depths
                ).items():
                    if name not in args.methods:
                        continue
                    start = time.perf_counter()
                    model.fit(X_train[idx], y_train[idx])
                    seconds = time.perf_counter() - start
                    chosen = getattr(model, "best_params_", "")
                    accuracy = model.score(X_test, y_test)
                    rows.append(
                        {
                            "n_per_class": n,
                            "seed": seed,
                            "method": name,
                            "accuracy": round(accuracy, 4),
                            "fit_s": round(seconds, 1),
                            "chosen": chosen,
                        }
                    )
                    print(
                        f"n={n:>4} seed={seed} {name:<26} {accuracy:.3f} "
                        f"fit {seconds:6.1f} s {chosen}",
                        flush=True,
                    )
    print("\nmean over seeds:")
    for n in args.sizes:
        for name in dict.fromkeys(r["method"] for r in rows):
            sel = [r for r in rows if r["n_per_class"] == n and r["method"] == name]
            acc = np.mean([r["accuracy"] for r in sel])
            fit = np.mean([r["fit_s"] for r in sel])
            print(f"n={n:>4} {name:<26} accuracy {acc:.3f}  fit {fit:6.1f} s")
    write_csv(rows, args.csv)


if __name__ == "__main__":
    main()
