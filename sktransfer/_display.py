"""TransferCurveDisplay: test accuracy against training examples per class."""

import numpy as np
from sklearn.base import clone


def few_shot_splits(y, sizes, seed):
    """Nested training sets of ``k`` examples per class and one disjoint rest.

    Returns
    -------
    train : dict of int to ndarray
        Indices of ``k`` examples of each class, for each ``k`` in ``sizes``;
        the set for a smaller ``k`` is part of the set for a larger one.
    rest : ndarray
        Indices of every example beyond the first ``max(sizes)`` of its class.
    """
    rng = np.random.RandomState(seed)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    rest = np.concatenate([idx[max(sizes) :] for idx in per_class])
    return {k: np.concatenate([idx[:k] for idx in per_class]) for k in sizes}, rest


def _with_seed(estimator, seed):
    """A clone of ``estimator`` with every ``random_state`` parameter set to ``seed``."""
    estimator = clone(estimator)
    names = [k for k in estimator.get_params() if k.split("__")[-1] == "random_state"]
    return estimator.set_params(**dict.fromkeys(names, seed))


class TransferCurveDisplay:
    """Transfer curve: test accuracy against training examples per class.

    One line per estimator (fine-tuned, frozen features with a logistic
    regression, from scratch, ...): the mean score over seeds, with a band of
    one standard deviation. Create it with :meth:`from_estimators`, which fits
    and scores, or from scores already measured; then :meth:`plot`.

    Parameters
    ----------
    n_per_class : array-like of shape (n_sizes,)
        Training examples per class.
    scores : dict of str to array-like of shape (n_sizes, n_seeds)
        Test scores of each estimator, by size and seed.
    seeds : array-like of shape (n_seeds,), default=None
        The seeds, for the record.

    Attributes
    ----------
    ax_ : matplotlib Axes
        Axes with the curves.
    figure_ : matplotlib Figure
        Figure holding the axes.
    lines_ : dict of str to matplotlib Line2D
        The mean curve of each estimator.
    bands_ : dict of str to matplotlib PolyCollection
        The band of one standard deviation around each curve (only with
        ``spread=True`` and more than one seed).

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.dummy import DummyClassifier
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sktransfer import TransferCurveDisplay
    >>> X, y = load_digits(return_X_y=True)
    >>> display = TransferCurveDisplay.from_estimators(
    ...     {"logreg": LogisticRegression(max_iter=500), "prior": DummyClassifier()},
    ...     X[:1000], y[:1000], X[1000:], y[1000:], n_per_class=[2, 8], seeds=[0, 1])
    >>> display.mean_scores()["logreg"].shape
    (2,)
    """

    def __init__(self, *, n_per_class, scores, seeds=None):
        self.n_per_class = n_per_class
        self.scores = scores
        self.seeds = seeds

    def mean_scores(self):
        """Mean score over seeds of each estimator, by size."""
        return {name: np.asarray(s, dtype=float).mean(axis=1) for name, s in self.scores.items()}

    def plot(self, ax=None, *, spread=True, title=None):
        """Draw the curves.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure's when None.
        spread : bool, default=True
            Whether to shade one standard deviation over seeds.
        title : str, default=None
            Title of the axes.

        Returns
        -------
        display : TransferCurveDisplay
            With ``ax_``, ``figure_``, ``lines_`` and ``bands_`` set.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots()
        sizes = np.asarray(self.n_per_class)
        self.lines_, self.bands_ = {}, {}
        for name, scores in self.scores.items():
            scores = np.asarray(scores, dtype=float)
            mean = scores.mean(axis=1)
            (self.lines_[name],) = ax.plot(sizes, mean, marker="o", label=name)
            if spread and scores.shape[1] > 1:
                std = scores.std(axis=1)
                color = self.lines_[name].get_color()
                self.bands_[name] = ax.fill_between(
                    sizes, mean - std, mean + std, color=color, alpha=0.2
                )
        ax.set(xscale="log", xlabel="training examples per class", ylabel="test accuracy")
        ax.minorticks_off()
        ax.set_xticks(sizes, labels=[str(k) for k in sizes])
        if title is not None:
            ax.set_title(title)
        ax.legend()
        self.ax_, self.figure_ = ax, ax.figure
        return self

    @classmethod
    def from_estimators(
        cls,
        estimators,
        X,
        y,
        X_test,
        y_test,
        *,
        n_per_class=(5, 10, 20),
        seeds=(0, 1, 2),
        ax=None,
        spread=True,
        title=None,
    ):
        """Fit each estimator on few examples per class, score it, plot the curves.

        For each seed, nested training sets of ``k`` examples per class are
        drawn from ``X, y`` (:func:`few_shot_splits`); a clone of each
        estimator, its ``random_state`` parameters set to the seed, is fitted
        on each and scored on ``X_test, y_test``.

        Parameters
        ----------
        estimators : dict of str to estimator
            The estimators to compare, by name.
        X, y : array-like
            Where training examples are drawn from (indexable by arrays).
        X_test, y_test : array-like
            Test data.
        n_per_class : sequence of int, default=(5, 10, 20)
            Training examples per class.
        seeds : sequence of int, default=(0, 1, 2)
            Seeds of the draws and of the estimators.
        ax, spread, title
            As in :meth:`plot`.

        Returns
        -------
        display : TransferCurveDisplay
        """
        X, y = np.asarray(X) if not isinstance(X, list) else X, np.asarray(y)
        sizes = list(n_per_class)
        scores = {name: np.empty((len(sizes), len(seeds))) for name in estimators}
        for j, seed in enumerate(seeds):
            train, _ = few_shot_splits(y, sizes, seed)
            for i, k in enumerate(sizes):
                rows = train[k]
                X_k = [X[r] for r in rows] if isinstance(X, list) else X[rows]
                for name, estimator in estimators.items():
                    fitted = _with_seed(estimator, seed).fit(X_k, y[rows])
                    scores[name][i, j] = fitted.score(X_test, y_test)
        display = cls(n_per_class=sizes, scores=scores, seeds=list(seeds))
        return display.plot(ax=ax, spread=spread, title=title)
