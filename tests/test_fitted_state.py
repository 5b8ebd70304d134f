"""Fitted attributes say what a fit did, and only a fit that succeeded sets them."""

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor

from .conftest import make_cnn, make_mlp


def test_failed_first_fit_leaves_the_estimator_unfitted(vectors):
    X, y = vectors
    clf = FineTunedClassifier(backbone=make_mlp(), max_epochs=2)
    with pytest.raises(ValueError, match="Unknown label type"):
        clf.fit(X, y + np.linspace(0, 0.5, len(y)))  # continuous y
    assert not hasattr(clf, "n_features_in_")
    with pytest.raises(NotFittedError):
        check_is_fitted(clf)
    with pytest.raises(NotFittedError):
        clf.predict(X)


def test_failed_fit_of_the_extractor_leaves_it_unfitted(vectors, tmp_path):
    X, _ = vectors
    ext = PretrainedFeatureExtractor(backbone=make_mlp(), weights=str(tmp_path / "no.pth"))
    with pytest.raises(ValueError, match="is not an existing checkpoint file"):
        ext.fit(X)
    with pytest.raises(NotFittedError):
        ext.transform(X)


def test_failed_refit_on_other_features_keeps_the_previous_feature_count(vectors):
    X, y = vectors
    clf = FineTunedClassifier(backbone=make_mlp(), max_epochs=2, random_state=0).fit(X, y)
    before = clf.predict_proba(X)
    with pytest.raises(ValueError, match="Unknown label type"):
        clf.fit(X[:, :4], y + 0.5)
    assert clf.n_features_in_ == 6
    np.testing.assert_array_equal(clf.predict_proba(X), before)


def test_no_epoch_after_the_warmup_reports_depth_zero(images):
    X, y = images
    X = X.transpose(0, 3, 1, 2) / np.float32(255)
    backbone = make_cnn()
    start = {k: v.clone() for k, v in backbone.state_dict().items()}
    clf = FineTunedClassifier(backbone=backbone, unfreeze_depth=2, warmup_epochs=2, max_epochs=2)
    with pytest.warns(UserWarning, match="max_epochs=2 equals warmup_epochs=2: no epoch"):
        clf.fit(X, y)
    assert clf.unfreeze_depth_ == 0
    assert [row["phase"] for row in clf.history_] == ["warmup", "warmup"]
    assert list(clf.n_trainable_params_) == ["warmup"]
    body = clf.net_.module_.body.blocks.state_dict()
    assert all(torch.equal(body[k], start[k]) for k in start)
