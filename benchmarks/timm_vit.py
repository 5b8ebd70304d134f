"""A timm vision transformer by name: ``timm:vit_tiny_patch16_224`` on Fashion-MNIST.

``FineTunedClassifier(backbone="timm:vit_tiny_patch16_224")`` on
``--n-per-class`` training images a class, for each ``--depths`` value of
``unfreeze_depth`` (the model has 14 blocks: token stem, 12 transformer
blocks, final norm), and once from scratch (``weights=None``, every block
training). Accuracy on the first ``--n-test`` test images; fit seconds.

Without internet access there are no pretrained ViT weights: by default the
backbone starts from timm's random initialisation, saved to a checkpoint
file and loaded as if it were pretrained, so the run shows the recipe at
work on a vision transformer, not what transfer from ImageNet gives. Pass
``--weights /path/to/model.safetensors`` (timm's
``vit_tiny_patch16_224.augreg_in21k_ft_in1k``) for real weights.

The transformer is built with a dynamic image size, so ``--input-size``
(64 by default, 4x4 patches; 224 is its native size) may be any multiple
of 16.

    python benchmarks/timm_vit.py [--n-per-class 10] [--depths 0 2 6 14]
                                  [--epochs 8] [--input-size 64]

Needs Fashion-MNIST (``apt-get install dataset-fashion-mnist``) and timm.
Prints a table and writes ``timm_vit.csv``.
"""

import argparse
import os
import tempfile
import time

import numpy as np
import timm
import torch
from _table import write_csv

from sktransfer import FineTunedClassifier
from sktransfer.datasets import fetch_fashion_mnist

MODEL = "vit_tiny_patch16_224"


def sample(y, n_per_class, seed):
    rng = np.random.RandomState(seed)
    return np.concatenate(
        [rng.choice(np.flatnonzero(y == c), n_per_class, replace=False) for c in np.unique(y)]
    )


def random_init_checkpoint(folder, seed):
    """timm's random initialisation of the model, as a state-dict file."""
    torch.manual_seed(seed)
    path = os.path.join(folder, f"{MODEL}-random-init.pth")
    torch.save(timm.create_model(MODEL, pretrained=False).state_dict(), path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-class", type=int, default=10)
    parser.add_argument("--depths", type=int, nargs="+", default=[0, 2, 6, 14])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default=None, help="a checkpoint of real weights")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--csv", default="timm_vit.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    X_train, y_train, X_test, y_test = fetch_fashion_mnist()
    X_test, y_test = X_test[: args.n_test], y_test[: args.n_test]
    idx = sample(y_train, args.n_per_class, args.seed)
    with tempfile.TemporaryDirectory() as folder:
        weights = args.weights or random_init_checkpoint(folder, args.seed)
        source = args.weights or "timm's random initialisation (no pretrained ViT weights offline)"
        print(
            f"timm:{MODEL}, weights: {source}\n{args.n_per_class} images a class, "
            f"{args.input_size} px, {args.epochs} epochs, {len(y_test)} test images, "
            f"{args.threads} torch threads",
            flush=True,
        )
        runs = [(str(depth), weights, depth) for depth in args.depths]
        runs.append(("scratch", None, "all"))
        rows = []
        for label, run_weights, depth in runs:
            clf = FineTunedClassifier(
                backbone=f"timm:{MODEL}",
                weights=run_weights,
                unfreeze_depth=depth,
                input_size=args.input_size,
                max_epochs=args.epochs,
                batch_size=16,
                random_state=args.seed,
            )
            start = time.perf_counter()
            clf.fit(X_train[idx], y_train[idx])
            seconds = time.perf_counter() - start
            accuracy = clf.score(X_test, y_test)
            rows.append(
                {
                    "unfreeze_depth": label,
                    "trained_blocks": clf.unfreeze_depth_,
                    "accuracy": round(accuracy, 4),
                    "fit_s": round(seconds, 1),
                }
            )
    print(f"\n{'unfreeze_depth':>14} {'blocks trained':>14} {'accuracy':>8} {'fit s':>6}")
    for row in rows:
        print(
            f"{row['unfreeze_depth']:>14} {row['trained_blocks']:>14} "
            f"{row['accuracy']:>8.3f} {row['fit_s']:>6.1f}"
        )
    write_csv(rows, args.csv)


if __name__ == "__main__":
    main()
