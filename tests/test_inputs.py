"""Image arrays in every accepted layout, file paths, and the extractor's output."""

import numpy as np
import pytest
from PIL import Image

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor

from .conftest import make_cnn, make_mlp


def _extractor(**params):
    return PretrainedFeatureExtractor(
        backbone="mobilenet_v3_small", weights=None, input_size=20, random_state=0, **params
    )


def test_image_layouts_give_the_same_features(images):
    X, _ = images
    ext = _extractor().fit(X)
    reference = ext.transform(X)  # (n, H, W, 3) uint8
    np.testing.assert_allclose(ext.transform(X.transpose(0, 3, 1, 2) / 255.0), reference, atol=1e-5)
    np.testing.assert_allclose(
        ext.transform((X.transpose(0, 3, 1, 2) / 255.0).astype(np.float32)), reference, atol=1e-5
    )
    grey = X[..., 0]
    np.testing.assert_allclose(
        ext.transform(grey), ext.transform(np.repeat(grey[..., None], 3, axis=-1)), atol=1e-6
    )


def test_file_paths_are_read_lazily_and_match_arrays(images, tmp_path):
    X, y = images
    paths = []
    for i, image in enumerate(X):
        path = tmp_path / f"{i}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    ext = _extractor(batch_size=5).fit(paths)
    np.testing.assert_allclose(ext.transform(paths), ext.transform(X), atol=1e-5)
    clf = FineTunedClassifier(
        backbone="mobilenet_v3_small", weights=None, input_size=20, max_epochs=1, random_state=0
    )
    proba_paths = clf.fit(paths, y).predict_proba(paths)
    np.testing.assert_allclose(proba_paths, clf.predict_proba(X), atol=1e-5)


def test_transform_runs_in_eval_mode_in_batches(images):
    X, _ = images
    ext = _extractor(batch_size=5).fit(X)
    assert not ext.backbone_.training
    assert not any(p.requires_grad for p in ext.backbone_.parameters())
    before = {k: v.clone() for k, v in ext.backbone_.state_dict().items()}
    out = ext.transform(X)
    assert all((before[k] == v).all() for k, v in ext.backbone_.state_dict().items())
    np.testing.assert_allclose(_extractor(batch_size=12).fit(X).transform(X), out, atol=1e-5)
    np.testing.assert_allclose(ext.transform(X[:3]), out[:3], atol=1e-5)


def test_set_output_pandas(vectors):
    X, _ = vectors
    ext = PretrainedFeatureExtractor(backbone=make_mlp(), random_state=0).set_output(
        transform="pandas"
    )
    frame = ext.fit_transform(X)
    assert list(frame.columns) == [f"pretrainedfeatureextractor{i}" for i in range(8)]
    assert list(ext.get_feature_names_out()) == list(frame.columns)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cnn_module_takes_channels_first_arrays(images, dtype):
    X, y = images
    X = (X.transpose(0, 3, 1, 2) / 255).astype(dtype)
    clf = FineTunedClassifier(backbone=make_cnn(), max_epochs=1, random_state=0).fit(X, y)
    assert not hasattr(clf, "n_features_in_")
    assert clf.predict_proba(X).shape == (12, 3)
    np.testing.assert_allclose(clf.predict_proba(X).sum(axis=1), 1, rtol=1e-6)
