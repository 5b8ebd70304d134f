"""GridSearchCV on a Dask cluster gives what it gives on one process."""

import numpy as np
import pytest
from joblib import parallel_backend
from sklearn.model_selection import GridSearchCV

from .conftest import SMALL_SEARCH_GRID, small_search_classifier

distributed = pytest.importorskip("distributed")


def test_search_on_a_local_dask_cluster_equals_n_jobs_1(vectors, tmp_path):
    X, y = vectors
    clf, grid = small_search_classifier(memory=str(tmp_path / "cache")), SMALL_SEARCH_GRID
    alone = GridSearchCV(clf, grid, cv=2, error_score="raise").fit(X, y)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        with parallel_backend("dask"):
            on_dask = GridSearchCV(clf, grid, cv=2, error_score="raise").fit(X, y)
    assert on_dask.best_params_ == alone.best_params_
    for split in ("split0_test_score", "split1_test_score"):
        np.testing.assert_array_equal(on_dask.cv_results_[split], alone.cv_results_[split])
