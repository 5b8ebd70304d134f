"""Inputs and sequences of calls that once broke sktransfer."""

import pickle

import numpy as np
import pytest
import torch

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor

from .conftest import make_cnn, make_mlp


def test_arrays_with_negative_strides(vectors, images):
    X, y = vectors
    reversed_X = X[::-1]
    ext = PretrainedFeatureExtractor(backbone=make_mlp(), random_state=0).fit(reversed_X)
    np.testing.assert_allclose(ext.transform(reversed_X), ext.transform(X)[::-1], atol=1e-6)
    clf = FineTunedClassifier(backbone=make_mlp(), max_epochs=2, random_state=0)
    assert clf.fit(reversed_X, y[::-1]).predict(X[::-1]).shape == (len(X),)
    imgs, _ = images
    ext = PretrainedFeatureExtractor(backbone="mobilenet_v3_small", weights=None, input_size=20)
    bgr = imgs[..., ::-1]
    np.testing.assert_allclose(
        ext.fit(imgs).transform(bgr), ext.transform(np.ascontiguousarray(bgr)), atol=1e-6
    )


@pytest.mark.parametrize("params", [{"weights": None}, {"train_bn": True, "unfreeze_depth": 3}])
def test_last_batch_of_one_sample_with_batchnorm_training(params):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(33, 6)).astype(np.float32)  # 33 = 32 + 1
    y = (X[:, 0] > 0).astype(int)
    clf = FineTunedClassifier(backbone=make_mlp(n_in=6, bn=True), max_epochs=2, **params)
    assert clf.fit(X, y).predict(X).shape == (33,)


def test_failed_refit_leaves_the_previous_fit_intact(vectors, tmp_path):
    X, y = vectors
    clf = FineTunedClassifier(backbone=make_mlp(), max_epochs=2, random_state=0).fit(X, y)
    before = clf.predict(X)
    clf.set_params(weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="is not an existing checkpoint file"):
        clf.fit(X, np.where(y, "cat", "dog"))
    assert list(clf.classes_) == [0, 1]
    np.testing.assert_array_equal(clf.predict(X), before)


def test_refit_on_images_forgets_the_feature_count(vectors, images):
    X, y = vectors
    clf = FineTunedClassifier(backbone=make_cnn(), max_epochs=2)
    clf.set_params(backbone=make_mlp()).fit(X, y)
    assert clf.n_features_in_ == 6
    imgs, labels = images
    clf.set_params(backbone=make_cnn()).fit((imgs.transpose(0, 3, 1, 2) / 255.0), labels)
    assert not hasattr(clf, "n_features_in_")


def test_unfreezing_every_block_caches_no_copy_of_the_input(images, capsys):
    imgs, y = images
    X = (imgs.transpose(0, 3, 1, 2) / 255).astype(np.float32)
    common = {"backbone": make_cnn(), "unfreeze_depth": "all", "max_epochs": 3, "random_state": 0}
    on = FineTunedClassifier(verbose=1, **common).fit(X, y)
    # 12 pooled 8-d features: the preprocessed images are not kept.
    assert "cut before block 0 of 3, 0.0 MiB" in capsys.readouterr().out
    off = FineTunedClassifier(frozen_cache=False, **common).fit(X, y)
    np.testing.assert_allclose(on.predict_proba(X), off.predict_proba(X), atol=1e-6)


def test_unpickled_net_keeps_its_module(vectors):
    X, y = vectors
    clf = FineTunedClassifier(backbone=make_mlp(), max_epochs=2).fit(X, y)
    net = pickle.loads(pickle.dumps(clf)).net_
    assert net.module is net.module_
    assert isinstance(net.module_, torch.nn.Module)


class _Payload:
    """Pickles as a call that creates a file: code a checkpoint must never run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_malicious_pickle_as_weights_is_refused_without_running_it(images, tmp_path):
    path, marker = tmp_path / "evil.pth", tmp_path / "ran"
    torch.save({"conv1.weight": _Payload(str(marker))}, path)
    with pytest.raises(ValueError, match="could not be read as a PyTorch state dict"):
        PretrainedFeatureExtractor(backbone="resnet18", weights=str(path)).fit(images[0])
    assert not marker.exists()


def test_channels_first_uint8_images_equal_channels_last(images):
    X, _ = images
    ext = PretrainedFeatureExtractor(backbone="resnet18", weights=None, input_size=20)
    features = ext.fit(X).transform(X)
    chw = np.ascontiguousarray(X.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(ext.transform(chw), features, rtol=0, atol=1e-5)


def test_threads_predicting_on_one_model_agree(images):
    from concurrent.futures import ThreadPoolExecutor

    X, y = images
    Xf = X.transpose(0, 3, 1, 2) / np.float32(255)
    clf = FineTunedClassifier(backbone=make_cnn(), max_epochs=2, batch_size=4, random_state=0)
    clf.fit(Xf, y)
    expected = clf.predict_proba(Xf)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: clf.predict_proba(Xf), range(8)))
    for proba in results:
        np.testing.assert_array_equal(proba, expected)
