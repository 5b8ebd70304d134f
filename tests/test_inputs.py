"""Image arrays in every accepted layout, file paths, and the extractor's output."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from torchvision.models import get_model

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor

from .conftest import make_cnn, make_mlp


def _extractor(**params):
    return PretrainedFeatureExtractor(
        backbone="mobilenet_v3_small", weights=None, input_size=20, random_state=0, **params
    )


def _save(images, folder):
    """Save each image as PNG in ``folder``; return the paths as str."""
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture
def photos():
    """Six 75 x 101 crops of scikit-learn's two sample photos, uint8 (n, H, W, 3)."""
    corners = [(0, 0), (150, 200), (300, 480)]
    return np.stack(
        [img[y : y + 75, x : x + 101] for img in load_sample_images().images for y, x in corners]
    )


def _resnet(input_size=32):
    return PretrainedFeatureExtractor(
        backbone="resnet18", weights=None, random_state=0, input_size=input_size
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
    paths = _save(X, tmp_path)
    ext = _extractor(batch_size=5).fit(paths)
    np.testing.assert_allclose(ext.transform(paths), ext.transform(X), atol=1e-5)
    clf = FineTunedClassifier(
        backbone="mobilenet_v3_small", weights=None, input_size=20, max_epochs=2, random_state=0
    )
    proba_paths = clf.fit(paths, y).predict_proba(paths)
    np.testing.assert_allclose(proba_paths, clf.predict_proba(X), atol=1e-5)


@pytest.mark.parametrize("input_size", [32, 64])
def test_files_and_arrays_are_resized_alike(photos, tmp_path, input_size):
    paths = _save(photos, tmp_path)
    ext = _resnet(input_size).fit(paths)
    np.testing.assert_allclose(ext.transform(paths), ext.transform(photos), rtol=0, atol=1e-5)


def test_files_of_different_sizes(photos, tmp_path):
    images = [photos[0], photos[1][:50], photos[3][:, :64], photos[4][:20, :33]]
    paths = _save(images, tmp_path)
    features = _resnet().fit(paths).transform(paths)
    ext = _resnet().fit(photos)
    for image, row in zip(images, features):
        np.testing.assert_allclose(row, ext.transform(image[None])[0], rtol=0, atol=1e-5)


def test_fine_tuning_on_files_matches_arrays(photos, tmp_path):
    paths = _save(photos, tmp_path)
    y = np.repeat(["china", "flower"], 3)
    checkpoint = tmp_path / "resnet18.pth"
    torch.save(get_model("resnet18", weights=None).state_dict(), checkpoint)
    common = {
        "backbone": "resnet18",
        "weights": str(checkpoint),
        "input_size": 32,
        "unfreeze_depth": 2,
        "warmup_epochs": 1,
        "max_epochs": 2,
        "batch_size": 4,
        "random_state": 0,
    }
    cached = FineTunedClassifier(**common).fit(paths, y)
    proba = cached.predict_proba(paths)
    uncached = FineTunedClassifier(frozen_cache=False, **common).fit(paths, y)
    np.testing.assert_allclose(uncached.predict_proba(paths), proba, rtol=0, atol=1e-6)
    arrays = FineTunedClassifier(**common).fit(photos, y)
    np.testing.assert_allclose(arrays.predict_proba(photos), proba, rtol=0, atol=1e-5)
    assert list(cached.classes_) == ["china", "flower"]


@pytest.mark.parametrize("mode, suffix", [("I;16", "png"), ("F", "tiff")])
def test_high_bit_depth_grey_files_keep_their_range(photos, tmp_path, mode, suffix):
    grey = photos[0].mean(axis=-1) / 255  # thirds of 8-bit steps: finer than 8 bits
    pixels = (grey * 65535).round().astype(np.uint16) if mode == "I;16" else grey
    path = str(tmp_path / f"grey.{suffix}")
    Image.fromarray(pixels.astype(np.float32) if mode == "F" else pixels).save(path)
    with Image.open(path) as img:
        assert img.mode == mode
    ext = _resnet().fit([path])
    expected = ext.transform((pixels / (65535 if mode == "I;16" else 1))[None])
    np.testing.assert_allclose(ext.transform([path]), expected, rtol=0, atol=1e-5)


def test_rgba_and_palette_files_read_as_their_rgb(photos, tmp_path):
    rgba = Image.fromarray(photos[0]).convert("RGBA")
    rgba.putalpha(100)
    palette = Image.fromarray(photos[1]).convert("P")
    paths = [str(tmp_path / "rgba.png"), str(tmp_path / "palette.png")]
    rgba.save(paths[0])
    palette.save(paths[1])
    ext = _resnet().fit(paths)
    expected = ext.transform(np.stack([photos[0], np.asarray(palette.convert("RGB"))]))
    np.testing.assert_allclose(ext.transform(paths), expected, rtol=0, atol=1e-5)


def test_paths_in_a_pandas_series_or_column(photos, tmp_path):
    paths = _save(photos[:3], tmp_path)
    ext = _resnet().fit(pd.Series(paths))
    expected = ext.transform(paths)
    np.testing.assert_array_equal(ext.transform(pd.Series(paths)), expected)
    np.testing.assert_array_equal(ext.transform(pd.DataFrame({"path": paths})), expected)


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
    clf = FineTunedClassifier(backbone=make_cnn(), max_epochs=2, random_state=0).fit(X, y)
    assert not hasattr(clf, "n_features_in_")
    assert clf.predict_proba(X).shape == (12, 3)
    np.testing.assert_allclose(clf.predict_proba(X).sum(axis=1), 1, rtol=1e-6)
