"""``random_state`` alone decides every random draw of a fit; nothing else moves torch's RNG."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from joblib import parallel_backend
from PIL import Image
from sklearn.model_selection import GridSearchCV
from torchvision.models import get_model

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor

from .conftest import make_mlp, small_search_classifier


def _resnet_checkpoint(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "resnet18.pth"
    torch.save(get_model("resnet18", weights=None).state_dict(), path)
    return str(path)


def test_first_fit_in_a_process_equals_later_ones(images, tmp_path):
    # The first fit builds the pretrained backbone (drawing random initial
    # weights before loading the checkpoint); later fits copy the loaded one.
    X, y = images
    params = {
        "backbone": "resnet18",
        "weights": _resnet_checkpoint(tmp_path),
        "input_size": 32,
        "warmup": "epochs",
        "unfreeze_depth": 2,
        "max_epochs": 3,
        "batch_size": 4,
        "random_state": 0,
    }
    first = FineTunedClassifier(**params).fit(X, y).predict_proba(X)
    # Fits in between draw from torch's generator and must not matter either.
    FineTunedClassifier(**{**params, "random_state": 5}).fit(X, y)
    torch.rand(7)
    later = FineTunedClassifier(**params).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(first, later)


@pytest.mark.parametrize("weights", ["DEFAULT", None])
def test_fits_in_threads_equal_fits_in_sequence(vectors, weights):
    X, y = vectors
    torch.manual_seed(0)
    backbone = make_mlp(n_in=6)

    def fit(seed):
        clf = FineTunedClassifier(
            backbone=backbone,
            weights=weights,
            warmup="epochs",
            unfreeze_depth=2,
            lr=1e-2,
            max_epochs=4,
            batch_size=8,
            random_state=seed,
        )
        return clf.fit(X, y).predict_proba(X)

    seeds = [0, 1, 2, 3]
    in_sequence = [fit(seed) for seed in seeds]
    with ThreadPoolExecutor(4) as pool:
        in_threads = list(pool.map(fit, seeds))
    for a, b in zip(in_sequence, in_threads):
        np.testing.assert_array_equal(a, b)


def test_search_in_threads_with_memory_equals_search_in_sequence(vectors, tmp_path):
    X, y = vectors
    clf = small_search_classifier()
    grid = {"unfreeze_depth": [2, 1, 0], "backbone_lr": [1e-3, 1e-2]}

    def search(n_jobs, folder):
        return GridSearchCV(
            clf.set_params(memory=str(tmp_path / folder)), grid, cv=2, n_jobs=n_jobs
        ).fit(X, y)

    alone = search(1, "alone")
    with parallel_backend("threading"):
        threads = search(2, "threads")
    assert threads.best_params_ == alone.best_params_
    for name in ("split0_test_score", "split1_test_score"):
        np.testing.assert_array_equal(threads.cv_results_[name], alone.cv_results_[name])


def _unchanged_rng(call):
    state = torch.random.get_rng_state()
    call()
    return torch.equal(state, torch.random.get_rng_state())


def test_fit_predict_and_transform_leave_torchs_random_state_alone(images, tmp_path):
    X, y = images
    paths = []
    for i, image in enumerate(X):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    for inputs in (X, paths):
        clf = FineTunedClassifier(
            backbone="resnet18", weights=None, input_size=20, max_epochs=2, batch_size=4
        )
        assert _unchanged_rng(lambda: clf.fit(inputs, y))
        assert _unchanged_rng(lambda: clf.predict_proba(inputs))
        ext = PretrainedFeatureExtractor(backbone="resnet18", weights=None, input_size=20)
        assert _unchanged_rng(lambda: ext.fit(inputs))
        assert _unchanged_rng(lambda: ext.transform(inputs))


def test_torch_seed_draws_as_torch_manual_seed_and_restores_the_callers_state():
    from sktransfer._base import torch_seed

    torch.manual_seed(123)
    before = torch.get_rng_state()
    with torch_seed(5):
        inside = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(5)
    assert torch.equal(inside, torch.rand(4))
