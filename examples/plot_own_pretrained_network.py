"""
===================================================
Transfer from a network you pretrained yourself
===================================================

No ImageNet weights here: a small CNN is pretrained on a source task of its
own, the first five Fashion-MNIST classes (T-shirt/top, trouser, pullover,
dress, coat), saved as a checkpoint, and becomes the backbone of a target task
with few labels: the other five classes (sandal, shirt, sneaker, bag, ankle
boot). Four models learn the target task from the same few images per class:

- fine-tuned: :class:`~sktransfer.FineTunedClassifier` on the pretrained
  blocks (linear-probe warm-up, then its top two blocks fine-tuned);
- frozen + logreg: :class:`~sktransfer.PretrainedFeatureExtractor` features
  with a ``LogisticRegression``;
- scratch: the same CNN randomly initialised (``weights=None``);
- pixels + logreg: a ``LogisticRegression`` on the raw pixels.

Everything runs offline on the CPU; it needs
``apt-get install dataset-fashion-mnist`` (the images).
"""

# %%
# The CNN: an ``nn.Sequential`` of blocks
# ---------------------------------------
# Each child of the ``nn.Sequential`` is one block; ``unfreeze_depth`` counts
# them from the top. The last block's feature maps are averaged into a 64-d
# feature vector, and the estimators put a new linear head on top. The
# network takes ``(n, 1, 28, 28)`` float arrays as they are.
import os
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from threadpoolctl import threadpool_limits
from torch import nn

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor, TransferCurveDisplay
from sktransfer.datasets import FASHION_MNIST_CLASSES, fetch_fashion_mnist

torch.set_num_threads(1)
threadpool_limits(1)  # BLAS too, for the logistic regressions


def conv_block(n_in, n_out):
    """3x3 convolution, BatchNorm, ReLU, then halve the resolution."""
    return nn.Sequential(
        nn.Conv2d(n_in, n_out, 3, padding=1),
        nn.BatchNorm2d(n_out),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


def make_cnn():
    """Three blocks: 28x28 -> 14x14 -> 7x7 -> 3x3 feature maps of 64 channels."""
    return nn.Sequential(conv_block(1, 32), conv_block(32, 64), conv_block(64, 64))


X, y, X_test, y_test = fetch_fashion_mnist()
X = X[:, None].astype(np.float32) / 255  # (n, 1, 28, 28) in [0, 1]
X_test = X_test[:, None].astype(np.float32) / 255
source, target, target_test = y < 5, y >= 5, y_test >= 5
print(make_cnn())

# %%
# Pretrain on the source task and save the blocks
# -----------------------------------------------
# Here the source network trains with ``FineTunedClassifier`` itself
# (``weights=None``: every block from random weights), on the first 5,000
# training images of the source classes. Any training loop would do: what the target task reads is a
# state dict of the ``nn.Sequential``, written with ``torch.save``.
start = time.perf_counter()
X_source, y_source = X[source][:5000], y[source][:5000]
pretraining = FineTunedClassifier(
    backbone=make_cnn(), weights=None, lr=1e-3, batch_size=64, max_epochs=5, random_state=0
).fit(X_source, y_source)
seconds = time.perf_counter() - start
source_test = y_test < 5
accuracy = pretraining.score(X_test[source_test], y_test[source_test])
print(f"pretrained on {len(y_source)} images of classes 0-4 in {seconds:.0f} s")
print(f"accuracy on the 5,000 test images of classes 0-4: {accuracy:.3f}")

pretrained = nn.Sequential(*pretraining.net_.module_.body.blocks)
checkpoint = os.path.join(tempfile.mkdtemp(), "fashion_cnn_classes_0-4.pt")
torch.save(pretrained.state_dict(), checkpoint)
print(f"saved {len(pretrained.state_dict())} tensors to {os.path.basename(checkpoint)}")

# %%
# Read the checkpoint back
# ------------------------
# A fresh ``make_cnn()`` with ``weights=<path>`` loads the file strictly (a
# missing or unexpected key is an error). Its features are those of the
# network in memory.
from_file = PretrainedFeatureExtractor(backbone=make_cnn(), weights=checkpoint)
in_memory = PretrainedFeatureExtractor(backbone=pretrained, weights="DEFAULT")
sample = X[target][:200]
difference = np.abs(from_file.fit_transform(sample) - in_memory.fit_transform(sample)).max()
print(f"largest difference between the two networks' features: {difference:.2g}")

# %%
# Learn the target classes from a few images each
# -----------------------------------------------
# :meth:`~sktransfer.TransferCurveDisplay.from_estimators` draws 3, 10 and 30
# training images per target class for each of three seeds, fits a clone of
# each model (its ``random_state`` set to the seed) and scores it on the 5,000
# test images of the target classes. The plot shows the mean over seeds with
# a band of one standard deviation.
fine_tuned = FineTunedClassifier(
    backbone=make_cnn(),
    weights=checkpoint,
    unfreeze_depth=2,
    lr=1e-4,
    backbone_lr=1e-3,
    warmup_epochs=0,
    max_epochs=30,
    batch_size=16,
)
models = {
    "fine-tuned": fine_tuned,
    "frozen + logreg": make_pipeline(
        PretrainedFeatureExtractor(backbone=make_cnn(), weights=checkpoint),
        LogisticRegression(max_iter=2000),
    ),
    "scratch": FineTunedClassifier(
        backbone=make_cnn(), weights=None, lr=1e-3, max_epochs=30, batch_size=16
    ),
    "pixels + logreg": make_pipeline(
        FunctionTransformer(np.reshape, kw_args={"shape": (-1, 28 * 28)}),
        LogisticRegression(max_iter=2000),
    ),
}
fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
start = time.perf_counter()
display = TransferCurveDisplay.from_estimators(
    models,
    X[target],
    y[target],
    X_test[target_test],
    y_test[target_test],
    n_per_class=[3, 10, 30],
    seeds=[0, 1, 2],
    ax=ax,
    title="Fashion-MNIST classes 5-9, CNN pretrained on classes 0-4",
)
print(f"36 fits and scores in {time.perf_counter() - start:.0f} s")

# %%
# Test accuracy, mean and standard deviation over the three seeds
# ---------------------------------------------------------------
table = pd.DataFrame(
    {
        name: [f"{m:.3f} ± {s:.3f}" for m, s in zip(np.mean(a, 1), np.std(a, 1))]
        for name, a in display.scores.items()
    },
    index=pd.Index(display.n_per_class, name="per class"),
)
print("target classes:", ", ".join(FASHION_MNIST_CLASSES[5:]))
print(table.to_string())
