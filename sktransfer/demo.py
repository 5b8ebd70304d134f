"""Few-shot transfer on handwritten digits: fine-tuned vs frozen vs scratch.

A small CNN is pretrained with :class:`~sktransfer.FineTunedClassifier`
(``weights=None``) on every scikit-learn ``load_digits`` image of the even
digits 0, 2, 4, 6, 8. Its top block, which separates those five classes, is
dropped; its two convolutional blocks become the pretrained backbone for a new
task, the odd digits 1, 3, 5, 7, 9, learnt from a few examples per class.
Three models learn that task from the same examples:

- fine-tuned: ``FineTunedClassifier`` on the pretrained blocks, its
  ``unfreeze_depth`` and ``backbone_lr`` chosen by ``GridSearchCV`` (stratified
  3-fold cross-validation on the training examples only);
- frozen + logreg: ``PretrainedFeatureExtractor`` features of the same blocks,
  standardised, then ``LogisticRegression``;
- scratch: the same architecture re-initialised (``weights=None``) and trained
  with the same learning rate, batch size and epochs.

Every model sits in a ``Pipeline`` that scales the raw 0..16 pixel values, so
the saved model takes ``load_digits().data`` rows as they are. Test images are
odd digits that no model, and no grid search, ever trains on. Accuracies are
means over seeds; each seed draws other training examples and test set and
seeds the networks. Everything printed is measured in the run; data and
weights come with scikit-learn and from the pretraining, nothing is
downloaded.

Run ``python -m sktransfer.demo`` (or ``sktransfer-demo``), ``--quick`` for
a smoke test. It writes ``results.csv``, ``runs.csv``,
``accuracy_vs_examples.png`` and ``finetuned_digits.joblib``.
"""

import argparse
import time
from functools import partial
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from torch import nn

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor

SOURCE_CLASSES = (0, 2, 4, 6, 8)
TRAINING = {"lr": 3e-3, "batch_size": 16, "max_epochs": 80}
PARAM_GRID = [
    {"finetune__unfreeze_depth": [0]},
    {"finetune__unfreeze_depth": [1, "all"], "finetune__backbone_lr": [1e-4, 1e-3]},
]
METHODS = ("fine-tuned", "frozen + logreg", "scratch")


def load_tasks(source_classes=SOURCE_CLASSES):
    """Split ``load_digits`` into the source task and the target task.

    Parameters
    ----------
    source_classes : tuple of int, default=SOURCE_CLASSES
        Digits of the pretraining task; the others form the target task.

    Returns
    -------
    source, target : tuple of (ndarray, ndarray)
        ``(X, y)`` of each task; ``X`` holds raw pixel values, shape (n, 64).
    """
    X, y = load_digits(return_X_y=True)
    is_source = np.isin(y, source_classes)
    X = X.astype(np.float32)
    return (X[is_source], y[is_source]), (X[~is_source], y[~is_source])


def pixel_scaler():
    """Scale ``load_digits`` pixels from 0..16 to 0..1 (a picklable transformer)."""
    return FunctionTransformer(partial(np.multiply, np.float32(1 / 16)))


def make_cnn():
    """The network: blocks of (n, 64) pixel rows -> 8x8 maps -> 128 features."""
    return nn.Sequential(
        nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        ),
        nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        ),
        nn.Sequential(nn.Linear(32 * 4 * 4, 128), nn.ReLU()),
    )


def pretrain(X, y, random_state=0):
    """Train the CNN from scratch on the source task; return its lower blocks.

    Returns
    -------
    backbone : torch.nn.Sequential
        The fitted convolutional blocks, without the source-specific top block.
    """
    start = time.perf_counter()
    net = FineTunedClassifier(
        backbone=make_cnn(),
        weights=None,
        lr=1e-3,
        batch_size=64,
        max_epochs=30,
        random_state=random_state,
    )
    model = Pipeline([("scale", pixel_scaler()), ("pretrain", net)]).fit(X, y)
    print(
        f"pretrained on {len(y)} images of digits {sorted(set(y.tolist()))} in "
        f"{time.perf_counter() - start:.1f} s; train accuracy {model.score(X, y):.3f}",
        flush=True,
    )
    return nn.Sequential(*net.net_.module_.body.blocks[:-1])


def make_models(backbone, seed, n_jobs=1):
    """The three estimators compared, each a ``Pipeline`` on raw pixel rows."""
    finetune = FineTunedClassifier(
        backbone=backbone, warmup_epochs=40, random_state=seed, **TRAINING
    )
    search = GridSearchCV(
        Pipeline([("scale", pixel_scaler()), ("finetune", finetune)]),
        PARAM_GRID,
        cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=seed),
        n_jobs=n_jobs,
    )
    frozen = Pipeline(
        [
            ("scale", pixel_scaler()),
            ("features", PretrainedFeatureExtractor(backbone=backbone)),
            ("standardize", StandardScaler()),
            ("logreg", LogisticRegression(max_iter=1000)),
        ]
    )
    scratch = FineTunedClassifier(backbone=backbone, weights=None, random_state=seed, **TRAINING)
    scratch = Pipeline([("scale", pixel_scaler()), ("scratch", scratch)])
    return dict(zip(METHODS, (search, frozen, scratch)))


def few_shot_splits(y, sizes, seed):
    """Nested training sets of ``k`` examples per class, one disjoint test set.

    Returns
    -------
    train : dict of int to ndarray
        Indices of ``k`` examples of each class, for each ``k`` in ``sizes``.
    test : ndarray
        Indices of all examples beyond the first ``max(sizes)`` of each class.
    """
    rng = np.random.RandomState(seed)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    test = np.concatenate([idx[max(sizes) :] for idx in per_class])
    return {k: np.concatenate([idx[:k] for idx in per_class]) for k in sizes}, test


def chosen_params(search):
    """``unfreeze_depth[@backbone_lr]`` picked by the grid search."""
    params = search.best_params_
    depth = params["finetune__unfreeze_depth"]
    return str(depth) if depth == 0 else f"{depth}@{params['finetune__backbone_lr']:g}"


def run(X, y, backbone, sizes, seeds, n_jobs=1):
    """Fit and score the three models for every seed and size.

    Returns
    -------
    runs : pandas.DataFrame
        One row per seed, size and method: test accuracy, parameters chosen.
    last : tuple
        The last fitted fine-tuned pipeline and its test data ``(X, y)``.
    """
    rows = []
    for seed in seeds:
        train, test = few_shot_splits(y, sizes, seed)
        for k in sizes:
            start = time.perf_counter()
            models = make_models(backbone, seed, n_jobs)
            scores = {}
            for method, model in models.items():
                model.fit(X[train[k]], y[train[k]])
                scores[method] = model.score(X[test], y[test])
            chosen = chosen_params(models["fine-tuned"])
            rows += [
                {
                    "seed": seed,
                    "n_per_class": k,
                    "method": m,
                    "accuracy": a,
                    "chosen": chosen if m == "fine-tuned" else "",
                }
                for m, a in scores.items()
            ]
            print(
                f"seed {seed}, {k:>2} per class, {len(test)} test: "
                + " | ".join(f"{m} {a:.3f}" for m, a in scores.items())
                + f" | chosen {chosen} ({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
    last = models["fine-tuned"].best_estimator_, X[test], y[test]
    return pd.DataFrame(rows), last


def summarize(runs):
    """Mean test accuracy over seeds per size and method, and the chosen params."""
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
    """Plot mean accuracy (and spread over seeds) against examples per class."""
    stats = runs.groupby(["method", "n_per_class"])["accuracy"].agg(["mean", "std"])
    for method in METHODS:
        s = stats.loc[method]
        ax.errorbar(
            s.index, s["mean"], yerr=s["std"].fillna(0), marker="o", capsize=3, label=method
        )
    ax.set(
        xscale="log",
        xlabel="training examples per class (odd digits)",
        ylabel="test accuracy",
        title="Transfer from even to odd digits",
    )
    ax.set_xticks(sorted(runs["n_per_class"].unique()), labels=sorted(runs["n_per_class"].unique()))
    ax.legend()
    return ax


def save_and_reload(model, X_test, y_test, path):
    """Pickle ``model``, load it back and check it scores exactly the same."""
    joblib.dump(model, path)
    reloaded = joblib.load(path)
    before, after = model.score(X_test, y_test), reloaded.score(X_test, y_test)
    same = np.array_equal(model.predict_proba(X_test), reloaded.predict_proba(X_test))
    print(
        f"saved {path}; reloaded model accuracy {after:.4f} (in memory {before:.4f}), "
        f"identical probabilities: {same}",
        flush=True,
    )
    if after != before or not same:
        raise RuntimeError(f"the model reloaded from {path} predicts differently.")
    return reloaded


def parse_args(argv=None):
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("sktransfer-demo-output"),
        help="where the CSV files, plot and model go",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one seed and two sizes: a smoke test of well under a minute",
    )
    parser.add_argument("--n-jobs", type=int, default=2, help="grid-search processes")
    return parser.parse_args(argv)


def main(argv=None):
    """Run the comparison, print and save the table, plot and model."""
    args = parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Networks this small run fastest on one thread; GridSearchCV runs fits in parallel.
    torch.set_num_threads(1)
    seeds, sizes = ((0,), (3, 10)) if args.quick else ((0, 1, 2, 3, 4), (3, 5, 10, 20))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"seeds {list(seeds)}, examples per class {list(sizes)}", flush=True)
    source, (X, y) = load_tasks()
    backbone = pretrain(*source)
    runs, (model, X_test, y_test) = run(X, y, backbone, sizes, seeds, args.n_jobs)
    table = summarize(runs)
    print(f"\nTest accuracy on odd digits, mean over seeds {list(seeds)}:")
    print(table.to_string())
    runs.to_csv(args.output_dir / "runs.csv", index=False)
    table.to_csv(args.output_dir / "results.csv")
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    draw_curves(runs, ax).figure.savefig(args.output_dir / "accuracy_vs_examples.png", dpi=120)
    plt.close(fig)
    print(f"\nfine-tuned model, seed {seeds[-1]}, {sizes[-1]} per class:")
    save_and_reload(model, X_test, y_test, args.output_dir / "finetuned_digits.joblib")
    print(f"wrote {args.output_dir}/ in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
