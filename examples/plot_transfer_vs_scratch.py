"""
==================================================
Few-shot transfer on digits: fine-tuned vs scratch
==================================================

A condensed run of ``python -m sktransfer.demo``: a small CNN pretrained on the
even digits of scikit-learn's ``load_digits`` becomes the backbone for the odd
digits, learnt from a few examples per class. Three models learn from the same
examples and are scored on odd-digit images none of them trained on:

- a :class:`~sktransfer.FineTunedClassifier` on the pretrained blocks, its
  ``unfreeze_depth`` and ``backbone_lr`` chosen by ``GridSearchCV``;
- frozen :class:`~sktransfer.PretrainedFeatureExtractor` features with a
  ``LogisticRegression``;
- the same architecture trained from scratch (``weights=None``).

Everything runs offline on the CPU in well under a minute.
"""

# %%
# Pretrain on the source task
# ---------------------------
# :func:`sktransfer.demo.digits_task` fits the CNN from scratch on every even
# digit (:func:`sktransfer.demo.pretrain`) and keeps its two convolutional
# blocks, without the top block that was fitted to the even classes. That
# ``nn.Sequential`` is the pretrained backbone of the odd-digits task.
import matplotlib.pyplot as plt
import torch

from sktransfer.demo import digits_task, draw_curves, run, summarize

torch.set_num_threads(1)  # tiny networks: one thread each, two grid-search processes
task = digits_task()

# %%
# Learn the odd digits from a few examples per class
# --------------------------------------------------
# For each seed, :func:`sktransfer.demo.run` draws 3 and then 10 training images
# per odd digit, and a test set from the remaining images. The grid search only
# sees the training images.
seeds, sizes = (0, 1), (3, 10)
runs, (search, X_test, y_test) = run(task, sizes, seeds, n_jobs=2)
table = summarize(runs)
print(table.to_string())

# %%
# Accuracy against examples per class
# -----------------------------------
# The gap between the pretrained models and scratch is what transfer buys; with
# only two seeds the error bars are wide, the full demo uses five seeds and four
# sizes.
fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
draw_curves(runs, ax, task.name)
plt.show()

# %%
# The fine-tuned pipeline the last grid search chose
# --------------------------------------------------
# It scales the raw pixels and runs the fine-tuned network, so it takes
# ``load_digits().data`` rows as they are.
print(search.best_params_)
print(f"test accuracy: {search.score(X_test, y_test):.3f}")
