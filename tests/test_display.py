"""TransferCurveDisplay: scores by size and seed, drawn as scikit-learn's Displays are."""

import matplotlib
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression

from sktransfer import FineTunedClassifier, TransferCurveDisplay
from sktransfer._display import few_shot_splits

from .conftest import make_mlp

matplotlib.use("Agg")


@pytest.fixture
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:900] / 16, y[:900], X[900:1300] / 16, y[900:1300]


def test_from_estimators_fits_each_size_and_seed(digits):
    X, y, X_test, y_test = digits
    display = TransferCurveDisplay.from_estimators(
        {"logreg": LogisticRegression(max_iter=500), "prior": DummyClassifier()},
        X,
        y,
        X_test,
        y_test,
        n_per_class=[2, 5],
        seeds=[0, 1],
        title="digits",
    )
    assert display.scores["logreg"].shape == (2, 2)
    train, _ = few_shot_splits(y, [2, 5], 1)
    expected = LogisticRegression(max_iter=500).fit(X[train[5]], y[train[5]]).score(X_test, y_test)
    assert display.scores["logreg"][1, 1] == expected
    np.testing.assert_allclose(display.scores["prior"], np.mean(y_test == 0))  # balanced: class 0
    assert set(display.lines_) == {"logreg", "prior"} and set(display.bands_) == {"logreg", "prior"}
    np.testing.assert_allclose(
        display.lines_["logreg"].get_ydata(), display.scores["logreg"].mean(1)
    )
    assert display.ax_.get_title() == "digits" and display.figure_ is display.ax_.figure


def test_seeds_reach_the_estimators_random_state(digits):
    X, y, X_test, y_test = digits
    clf = FineTunedClassifier(backbone=make_mlp(), max_epochs=2, warmup="epochs")
    display = TransferCurveDisplay.from_estimators(
        {"fine-tuned": clf}, X, y, X_test, y_test, n_per_class=[3], seeds=[4, 4, 5]
    )
    first, again, other = display.scores["fine-tuned"][0]
    assert first == again and first != other


def test_plot_on_given_axes_without_spread(digits):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    display = TransferCurveDisplay(n_per_class=[1, 10], scores={"a": [[0.2, 0.4], [0.8, 0.8]]})
    assert display.plot(ax=ax, spread=False).ax_ is ax
    assert display.bands_ == {}
    np.testing.assert_allclose(display.lines_["a"].get_ydata(), [0.3, 0.8])
    plt.close(fig)
