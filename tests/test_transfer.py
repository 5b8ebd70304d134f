"""Transfer beats training from scratch where it must: few examples per class."""

import numpy as np
from torch import nn

from sktransfer import FineTunedClassifier
from sktransfer.datasets import make_transfer_classification


def _mlp():
    widths = [96, 96, 48, 24]
    return nn.Sequential(
        *[nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(widths[:-1], widths[1:])]
    )


def test_pretrained_on_source_classes_beats_scratch_on_new_classes():
    # A network pretrained on 20 classes, transferred to 5 others with 5 examples each.
    X_src, y_src = make_transfer_classification(range(20), 300, random_state=1)
    source = FineTunedClassifier(
        backbone=_mlp(), weights=None, lr=3e-3, max_epochs=15, batch_size=64, random_state=0
    ).fit(X_src, y_src)
    assert source.score(*make_transfer_classification(range(20), 20, random_state=2)) > 0.9
    pretrained = nn.Sequential(*source.net_.module_.body.blocks)

    X_test, y_test = make_transfer_classification(range(20, 25), 200, random_state=99)
    transfer, scratch = [], []
    for seed in range(3):
        X, y = make_transfer_classification(range(20, 25), 5, random_state=100 + seed)
        common = {"backbone": pretrained, "lr": 3e-3, "max_epochs": 100, "random_state": seed}
        tr = FineTunedClassifier(
            unfreeze_depth="all", backbone_lr=3e-4, warmup="epochs", warmup_epochs=40, **common
        ).fit(X, y)
        sc = FineTunedClassifier(weights=None, **common).fit(X, y)
        transfer.append(tr.score(X_test, y_test))
        scratch.append(sc.score(X_test, y_test))
    assert np.mean(transfer) > 0.8
    assert np.mean(transfer) > np.mean(scratch) + 0.3
