"""Parameters are checked at fit; messages name the parameter, what is valid and the value."""

import re

import numpy as np
import pytest

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor
from sktransfer._compat import InvalidParameterError

from .conftest import make_mlp


@pytest.mark.parametrize(
    "param, value, valid",
    [
        ("unfreeze_depth", -1, "an int in the range [0, inf) or a str among ['all']"),
        ("unfreeze_depth", 1.0, "an int in the range [0, inf) or a str among ['all']"),
        ("lr", 0, "a float in the range (0, inf)"),
        ("lr", True, "a float in the range (0, inf)"),
        ("lr", float("nan"), "a float in the range (0, inf)"),
        ("layer_decay", 1.5, "a float in the range (0, 1]"),
        ("train_bn", "yes", "a bool"),
        ("random_state", -1, "None, an int in the range [0, 2**32 - 1] or a numpy RandomState"),
        ("memory", 3, "None, a str or an object implementing 'cache'"),
        ("warmup", "probe", "a str among ['epochs', 'linear_probe']"),
    ],
)
def test_invalid_parameter_is_named_with_what_is_valid(vectors, param, value, valid):
    clf = FineTunedClassifier(backbone=make_mlp(), **{param: value})
    msg = f"The {param!r} parameter of FineTunedClassifier must be {valid}. Got {value!r} instead."
    with pytest.raises(InvalidParameterError, match=re.escape(msg)):
        clf.fit(*vectors)
    assert not hasattr(clf, "n_features_in_")  # checked before anything else


@pytest.mark.parametrize(
    "params",
    [
        {"unfreeze_depth": "all", "layer_decay": 1, "lr": 1, "verbose": True},
        {"random_state": np.random.RandomState(0), "train_bn": np.bool_(True), "verbose": 2},
    ],
)
def test_valid_edge_values_are_accepted(vectors, params):
    clf = FineTunedClassifier(backbone=make_mlp(), max_epochs=2, **params).fit(*vectors)
    assert clf.predict(vectors[0]).shape == (len(vectors[0]),)


def test_extractor_checks_its_parameters(vectors):
    msg = "The 'batch_size' parameter of PretrainedFeatureExtractor must be an int in the range"
    with pytest.raises(InvalidParameterError, match=re.escape(msg)):
        PretrainedFeatureExtractor(backbone=make_mlp(), batch_size=0).fit(vectors[0])
