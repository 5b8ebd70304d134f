"""Few-shot transfer on handwritten digits: fine-tuned vs frozen vs scratch.

A small CNN is pretrained from scratch with :class:`~sktransfer.FineTunedClassifier`
on every ``load_digits`` image of the even digits. Its top block, fitted to those
five classes, is dropped; its two convolutional blocks are the pretrained backbone
for the odd digits, learnt from a few examples per class by three models:

- fine-tuned: ``FineTunedClassifier`` (linear-probe warm-up, then fine-tuning),
  ``unfreeze_depth`` and ``backbone_lr`` chosen by ``GridSearchCV`` with stratified
  3-fold cross-validation on the training examples;
- frozen + logreg: ``PretrainedFeatureExtractor``, standardised, ``LogisticRegression``;
- scratch: the same architecture re-initialised (``weights=None``), trained with the
  same learning rate, batch size and number of epochs.

Each model is a ``Pipeline`` that scales the raw pixels, so the saved model takes
``load_digits().data`` rows. Test images are odd digits that no model, and no grid
search, trains on. Accuracies are means over seeds, each drawing other training and
test images. Every number printed is measured in the run; nothing is downloaded.

``python -m sktransfer.demo [--quick] [--output-dir DIR]`` (or ``sktransfer-demo``)
writes ``results.csv``, ``runs.csv``, ``accuracy_vs_examples.png`` and
``finetuned_digits.joblib``.
"""

import argparse
import time
from functools import partial
from pathlib import Path

import joblib
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from torch import nn

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor

try:
    import matplotlib
    import pandas as pd
except ImportError as exc:
    raise ImportError(
        'The demo needs matplotlib and pandas: pip install "sktransfer[demo]"'
    ) from exc

OUTPUT_DIR = "sktransfer-demo-output"
SOURCE_CLASSES = (0, 2, 4, 6, 8)
PRETRAINING = {"weights": None, "lr": 1e-3, "batch_size": 64, "max_epochs": 30}
TRAINING = {"lr": 3e-3, "batch_size": 16, "max_epochs": 80}  # shared by fine-tuned and scratch
FINETUNING = {**TRAINING, "warmup": "linear_probe", "warmup_epochs": 40}
PARAM_GRID = [
    {"finetune__unfreeze_depth": [0]},
    {"finetune__unfreeze_depth": [1, "all"], "finetune__backbone_lr": [1e-4, 1e-3]},
]
METHODS = ("fine-tuned", "frozen + logreg", "scratch")


def load_tasks(source_classes=SOURCE_CLASSES):
    """Split ``load_digits`` into the source and the target task.

    Returns
    -------
    source, target : tuple of (ndarray, ndarray)
        ``(X, y)`` of each task; ``X`` holds raw pixels (0..16), shape (n, 64).
    """
    X, y = load_digits(return_X_y=True)
    X, is_source = X.astype(np.float32), np.isin(y, source_classes)
    return (X[is_source], y[is_source]), (X[~is_source], y[~is_source])


def pixel_scaler():
    """Pixels from 0..16 to 0..1, picklable by reference (no function of this file)."""
    return FunctionTransformer(partial(np.multiply, np.float32(1 / 16)))


def make_cnn():
    """Blocks that take (n, 64) pixel rows: two conv blocks, then a dense block."""
    conv1 = [nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32)]
    conv2 = [nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(
        nn.Sequential(*conv1, nn.ReLU()),
        nn.Sequential(*conv2, nn.Flatten()),
        nn.Sequential(nn.Linear(32 * 4 * 4, 128), nn.ReLU()),
    )


def pretrain(X, y, random_state=0):
    """Train the CNN on the source task; return its blocks without the top one."""
    start = time.perf_counter()
    net = FineTunedClassifier(backbone=make_cnn(), random_state=random_state, **PRETRAINING)
    model = Pipeline([("scale", pixel_scaler()), ("pretrain", net)]).fit(X, y)
    print(
        f"pretrained on {len(y)} images of digits {sorted(set(y.tolist()))} in "
        f"{time.perf_counter() - start:.1f} s; train accuracy {model.score(X, y):.3f}",
        flush=True,
    )
    return nn.Sequential(*net.net_.module_.body.blocks[:-1])


def make_models(backbone, seed, n_jobs=1):
    """The three models compared, each a ``Pipeline`` on raw pixel rows."""
    finetune = FineTunedClassifier(backbone=backbone, random_state=seed, **FINETUNING)
    search = GridSearchCV(
        Pipeline([("scale", pixel_scaler()), ("finetune", finetune)]),
        PARAM_GRID,
        cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=seed),
        n_jobs=n_jobs,
    )
    features = PretrainedFeatureExtractor(backbone=backbone)
    logreg = LogisticRegression(max_iter=1000)
    frozen = make_pipeline(pixel_scaler(), features, StandardScaler(), logreg)
    scratch = FineTunedClassifier(backbone=backbone, weights=None, random_state=seed, **TRAINING)
    scratch = Pipeline([("scale", pixel_scaler()), ("scratch", scratch)])
    return dict(zip(METHODS, (search, frozen, scratch)))


def few_shot_splits(y, sizes, seed):
    """Nested training sets of ``k`` examples per class and one disjoint test set.

    Returns
    -------
    train : dict of int to ndarray
        Indices of ``k`` examples of each class, for each ``k`` in ``sizes``.
    test : ndarray
        Indices of every example beyond the first ``max(sizes)`` of its class.
    """
    rng = np.random.RandomState(seed)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    test = np.concatenate([idx[max(sizes) :] for idx in per_class])
    return {k: np.concatenate([idx[:k] for idx in per_class]) for k in sizes}, test


def chosen_params(search):
    """``unfreeze_depth@backbone_lr`` (just the depth for 0) picked by the search."""
    params = search.best_params_
    depth = params["finetune__unfreeze_depth"]
    return str(depth) if depth == 0 else f"{depth}@{params['finetune__backbone_lr']:g}"


def run(X, y, backbone, sizes, seeds, n_jobs=1):
    """Fit and score the three models for every seed and size, printing each result.

    Returns
    -------
    runs : pandas.DataFrame
        One row per seed, size and method: test accuracy and parameters chosen.
    last : tuple
        The last fitted grid search of the fine-tuned model, its test ``X`` and ``y``.
    """
    rows = []
    for seed in seeds:
        train, test = few_shot_splits(y, sizes, seed)
        for k in sizes:
            start = time.perf_counter()
            models, scores = make_models(backbone, seed, n_jobs), {}
            for method, model in models.items():
                scores[method] = model.fit(X[train[k]], y[train[k]]).score(X[test], y[test])
            chosen = chosen_params(models["fine-tuned"])
            rows += [
                (seed, k, m, a, chosen if m == "fine-tuned" else "") for m, a in scores.items()
            ]
            print(
                f"seed {seed}, {k:>2} per class, {len(test)} test: "
                + " | ".join(f"{m} {a:.3f}" for m, a in scores.items())
                + f" | chosen {chosen} ({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
    columns = ["seed", "n_per_class", "method", "accuracy", "chosen"]
    return pd.DataFrame(rows, columns=columns), (models["fine-tuned"], X[test], y[test])


def summarize(runs):
    """Mean accuracy over seeds per size and method, paired wins and chosen params."""
    table = runs.pivot_table(index="n_per_class", columns="method", values="accuracy")
    table = table[list(METHODS)].round(3).rename_axis(columns=None)
    table["fine-tuned - scratch"] = (table["fine-tuned"] - table["scratch"]).round(3)
    paired = runs.pivot_table(index=["n_per_class", "seed"], columns="method", values="accuracy")
    wins = (paired["fine-tuned"] > paired["scratch"]).groupby(level=0)
    table["seeds fine-tuned > scratch"] = wins.sum().astype(str) + "/" + wins.size().astype(str)
    fine = runs[runs["method"] == "fine-tuned"]
    table["chosen depth@backbone_lr per seed"] = fine.groupby("n_per_class")["chosen"].agg(" ".join)
    return table


def draw_curves(runs, ax):
    """Plot mean test accuracy (bars: std over seeds) against examples per class."""
    stats = runs.groupby(["method", "n_per_class"])["accuracy"].agg(["mean", "std"])
    for method in METHODS:
        s = stats.loc[method]
        ax.errorbar(s.index, s["mean"], s["std"].fillna(0), marker="o", capsize=3, label=method)
    sizes = sorted(runs["n_per_class"].unique())
    ax.set(xscale="log", xlabel="training examples per class (odd digits)")
    ax.set(ylabel="test accuracy", title="Transfer from even to odd digits")
    ax.minorticks_off()
    ax.set_xticks(sizes, labels=[str(k) for k in sizes])
    ax.legend()
    return ax


def save_and_reload(search, X_test, y_test, path):
    """Pickle the best pipeline of ``search``, reload it, check it predicts the same."""
    joblib.dump(search.best_estimator_, path)
    reloaded = joblib.load(path)
    before, after = search.score(X_test, y_test), reloaded.score(X_test, y_test)
    same = np.array_equal(search.predict_proba(X_test), reloaded.predict_proba(X_test))
    message = f"accuracy {after:.4f} (in memory {before:.4f}), same probabilities: {same}"
    print(f"saved and reloaded {path}: {message}", flush=True)
    if after != before or not same:
        raise RuntimeError(f"the model reloaded from {path} predicts differently.")
    return reloaded


def parse_args(argv=None):
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR, help="folder of the outputs")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 sizes: a smoke test")
    parser.add_argument("--n-jobs", type=int, default=2, help="grid-search processes")
    return parser.parse_args(argv)


def main(argv=None):
    """Run the comparison; print and save the table, the plot and the best model."""
    args = parse_args(argv)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Networks this small train fastest on one thread; the grid search runs in parallel.
    torch.set_num_threads(1)
    seeds, sizes = ((0,), (3, 5)) if args.quick else ((0, 1, 2, 3, 4), (3, 5, 10, 20))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"seeds {list(seeds)}, examples per class {list(sizes)}", flush=True)
    source, (X, y) = load_tasks()
    runs, (search, X_test, y_test) = run(X, y, pretrain(*source), sizes, seeds, args.n_jobs)
    table = summarize(runs)
    print(f"\nTest accuracy on odd digits, mean over seeds {list(seeds)}:\n{table.to_string()}")
    runs.to_csv(args.output_dir / "runs.csv", index=False)
    table.to_csv(args.output_dir / "results.csv")
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    draw_curves(runs, ax)
    fig.savefig(args.output_dir / "accuracy_vs_examples.png", dpi=120)
    plt.close(fig)
    print(f"\nbest fine-tuned pipeline, seed {seeds[-1]}, {sizes[-1]} per class:")
    save_and_reload(search, X_test, y_test, args.output_dir / "finetuned_digits.joblib")
    print(f"wrote {args.output_dir}/ in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
