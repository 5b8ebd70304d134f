"""Transfer vs scratch on related synthetic tasks, through FineTunedClassifier.

The protocol of the small numpy experiment sktransfer is built from: 25
classes that share structure (``sktransfer.datasets``), an MLP with hidden
layers [96, 48, 24], pretrained on 20 source classes, transferred to the 5
others with n examples per class: a 40-epoch head warm-up at 3e-3, then 60
epochs with every block unfrozen at 3e-4 (the head keeps 3e-3), against the
same network from scratch for 100 epochs at 3e-3. Accuracy on 200 test
examples per class, mean over seeds.

    python benchmarks/seed_experiment.py [--seeds 10] [--sizes 5 10 20 50 100]

With ``--variants``, it also compares ``unfreeze_depth`` 0..3 and
``layer_decay`` 0.3 (with depth 3) against the same budget: which depth wins
at which n.

Prints a table and writes it to ``seed_experiment.csv``.
"""

import argparse
import time

import numpy as np
import torch
from _table import write_csv
from torch import nn

from sktransfer import FineTunedClassifier
from sktransfer.datasets import make_transfer_classification

SOURCE, TARGET = range(20), range(20, 25)


def mlp(widths=(96, 96, 48, 24)):
    """Three blocks, each a Linear layer and a ReLU."""
    pairs = zip(widths[:-1], widths[1:])
    return nn.Sequential(*[nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in pairs])


def pretrain(seed):
    """The source network, trained on 800 examples of each source class."""
    X, y = make_transfer_classification(SOURCE, 800, random_state=1000 + seed)
    source = FineTunedClassifier(
        backbone=mlp(), weights=None, lr=3e-3, max_epochs=50, random_state=seed
    ).fit(X, y)
    return nn.Sequential(*source.net_.module_.body.blocks)


VARIANTS = {
    "depth 0": {"unfreeze_depth": 0},
    "depth 1": {"unfreeze_depth": 1},
    "depth 2": {"unfreeze_depth": 2},
    "depth 3, decay 0.3": {"unfreeze_depth": 3, "layer_decay": 0.3},
}


def run(seed, n, backbone, test, variants=False):
    """Test accuracy of transfer (depth 3 = all), scratch and, optionally, variants."""
    X, y = make_transfer_classification(TARGET, n, random_state=2000 + seed)
    common = {"backbone": backbone, "lr": 3e-3, "max_epochs": 100, "random_state": seed}
    # The seed's recipe: a random head warmed up for 40 epochs.
    transfer = {"backbone_lr": 3e-4, "warmup": "epochs", "warmup_epochs": 40, **common}
    models = {
        "transfer": FineTunedClassifier(unfreeze_depth="all", **transfer),
        "scratch": FineTunedClassifier(weights=None, **common),
    }
    if variants:
        models.update({k: FineTunedClassifier(**transfer, **v) for k, v in VARIANTS.items()})
    return {name: model.fit(X, y).score(*test) for name, model in models.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    parser.add_argument("--variants", action="store_true")
    parser.add_argument("--csv", default="seed_experiment.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny networks: one thread is fastest
    seeds = list(range(args.seeds))
    print(f"seeds: {seeds}", flush=True)
    test = make_transfer_classification(TARGET, 200, random_state=99)
    start = time.perf_counter()
    sources = {seed: pretrain(seed) for seed in seeds}
    print(f"pretrained {len(seeds)} source networks in {time.perf_counter() - start:.0f} s")
    rows = []
    for n in args.sizes:
        scores = [run(seed, n, sources[seed], test, args.variants) for seed in seeds]
        row = {"n_per_class": n}
        for name in scores[0]:
            values = np.array([s[name] for s in scores])
            row[name] = round(values.mean(), 4)
            row[f"{name} std"] = round(values.std(), 4)
        rows.append(row)
        print(
            f"n={n:>3}/class  "
            + "  ".join(f"{k} {row[k]:.3f} ± {row[k + ' std']:.3f}" for k in scores[0]),
            flush=True,
        )
    write_csv(rows, args.csv)


if __name__ == "__main__":
    main()
