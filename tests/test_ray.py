"""GridSearchCV through joblib's Ray backend gives what it gives on one process."""

import os

import numpy as np
import pytest
from joblib import parallel_backend
from sklearn.model_selection import GridSearchCV

from .conftest import SMALL_SEARCH_GRID, small_search_classifier

ray = pytest.importorskip("ray")
ray_joblib = pytest.importorskip("ray.util.joblib")


@pytest.fixture
def local_ray():
    """A local Ray of two CPUs, shut down after the test."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_search_on_a_local_ray_equals_n_jobs_1(vectors, tmp_path, local_ray):
    X, y = vectors
    clf, grid = small_search_classifier(memory=str(tmp_path / "cache")), SMALL_SEARCH_GRID
    alone = GridSearchCV(clf, grid, cv=2, error_score="raise").fit(X, y)
    scored_in = tmp_path / "scored_in"
    scored_in.mkdir()

    def accuracy(estimator, X, y):  # notes the process each candidate is scored in
        (scored_in / str(os.getpid())).touch()
        return estimator.score(X, y)

    ray_joblib.register_ray()
    with parallel_backend("ray", n_jobs=2):
        search = GridSearchCV(clf, grid, cv=2, scoring=accuracy, error_score="raise")
        on_ray = search.fit(X, y)
    # The candidates ran in Ray's worker processes, not in this one.
    pids = {int(path.name) for path in scored_in.iterdir()}
    assert pids and os.getpid() not in pids
    assert on_ray.best_params_ == alone.best_params_
    for split in ("split0_test_score", "split1_test_score"):
        np.testing.assert_array_equal(on_ray.cv_results_[split], alone.cv_results_[split])
