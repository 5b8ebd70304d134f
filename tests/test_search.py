"""GridSearchCV tunes the recipe, scratch included, inside a Pipeline."""

import pytest
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import FineTunedClassifier

from .conftest import make_mlp

PARAM_GRID = [
    {"clf__unfreeze_depth": [0, 1, 2], "clf__backbone_lr": [1e-4, 1e-3]},
    {"clf__weights": [None]},
]


def _candidates():
    out = [
        {"clf__unfreeze_depth": d, "clf__backbone_lr": lr} for d in (0, 1, 2) for lr in (1e-4, 1e-3)
    ]
    return out + [{"clf__weights": None}]


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_grid_search_over_depth_lr_and_scratch(vectors, n_jobs):
    X, y = vectors
    pipe = Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "clf",
                FineTunedClassifier(backbone=make_mlp(), lr=1e-2, max_epochs=4, random_state=0),
            ),
        ]
    )
    search = GridSearchCV(pipe, PARAM_GRID, cv=3, n_jobs=n_jobs).fit(X, y)
    assert search.best_params_ in _candidates()
    assert len(search.cv_results_["params"]) == 7
    assert search.cv_results_["mean_test_score"].min() >= 0.0
    fitted = search.best_estimator_.named_steps["clf"]
    assert fitted.n_blocks_ == 3
    assert search.score(X, y) > 0.5
