"""Bad input gets an error that names the parameter, the value and what is valid."""

import os
import re
from urllib.error import URLError

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageFile
from torch import nn
from torchvision.models import ResNet18_Weights, get_model

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor
from sktransfer._compat import InvalidParameterError

from .conftest import make_mlp


def _named(**params):
    return FineTunedClassifier(input_size=16, max_epochs=2, **params)


def test_unknown_backbone(images):
    with pytest.raises(
        InvalidParameterError, match=r"'backbone' parameter.*resnet18.*Got 'resnet9'"
    ):
        _named(backbone="resnet9").fit(*images)


def test_unfreeze_depth_out_of_range(images):
    msg = r"unfreeze_depth=7, but resnet18 has 5 blocks; use 0..5 or 'all'"
    with pytest.raises(ValueError, match=re.escape(msg)):
        _named(backbone="resnet18", weights=None, unfreeze_depth=7).fit(*images)


def test_unfreeze_depth_checked_before_weights_are_read(images, monkeypatch):
    def offline(*args, **kwargs):
        raise AssertionError("weights read before the parameters were checked")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(ValueError, match="unfreeze_depth=6"):
        _named(backbone="resnet18", unfreeze_depth=6).fit(*images)


def test_unfreeze_depth_out_of_range_for_module(vectors):
    with pytest.raises(ValueError, match=r"unfreeze_depth=4, but the backbone module has 3"):
        FineTunedClassifier(backbone=make_mlp(), unfreeze_depth=4).fit(*vectors)


@pytest.mark.parametrize(
    "param, value",
    [("lr", -1e-3), ("backbone_lr", 0.0), ("layer_decay", 1.5), ("max_epochs", 0)],
)
def test_invalid_numbers(vectors, param, value):
    clf = FineTunedClassifier(backbone=make_mlp(), **{param: value})
    with pytest.raises(InvalidParameterError, match=rf"'{param}' parameter .* Got {value!r}"):
        clf.fit(*vectors)


def test_warmup_longer_than_training(vectors):
    msg = "warmup_epochs=5 exceeds max_epochs=3; use 0 <= warmup_epochs <= max_epochs"
    with pytest.raises(ValueError, match=re.escape(msg)):
        FineTunedClassifier(backbone=make_mlp(), warmup_epochs=5, max_epochs=3).fit(*vectors)


@pytest.mark.parametrize(
    "X, match",
    [
        (
            np.zeros((4, 10), dtype=np.uint8),
            r"X has shape \(4, 10\), but backbone='resnet18' takes images",
        ),
        (
            np.zeros((4, 5, 8, 8), dtype=np.uint8),
            r"shape \(4, 5, 8, 8\), which is not an image array",
        ),
        (
            np.full((4, 3, 8, 8), 255.0),
            r"values in \[255, 255\]; float images must lie in \[0, 1\]",
        ),
        (np.zeros((4, 3, 8, 8), dtype=np.int64), r"dtype int64; images must be uint8"),
    ],
)
def test_wrong_image_input(X, match):
    with pytest.raises(ValueError, match=match):
        _named(backbone="resnet18", weights=None).fit(X, [0, 1, 0, 1])


def test_nan_in_X(images, vectors):
    X, y = images
    X = X.astype(np.float32) / 255
    X[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        _named(backbone="resnet18", weights=None).fit(X, y)
    X, y = vectors
    X = X.copy()
    X[3, 2] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        FineTunedClassifier(backbone=make_mlp()).fit(X, y)


def test_single_class(vectors):
    X, _ = vectors
    with pytest.raises(ValueError, match=r"at least 2 classes in y; got 1 class: 'cat'"):
        FineTunedClassifier(backbone=make_mlp()).fit(X, ["cat"] * len(X))


def test_weights_unavailable_offline_says_how_to_pass_a_checkpoint(images, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    msg = (
        r"Could not obtain the pretrained weights ResNet18_Weights.IMAGENET1K_V1 for "
        r"backbone='resnet18'.*pass a local checkpoint path instead: "
        r"weights='/path/to/resnet18-f37072fd.pth'"
    )
    for weights in ("DEFAULT", "IMAGENET1K_V1", ResNet18_Weights.IMAGENET1K_V1):
        with pytest.raises(RuntimeError, match=msg):
            _named(backbone="resnet18", weights=weights).fit(*images)
        with pytest.raises(RuntimeError, match=msg):
            PretrainedFeatureExtractor(backbone="resnet18", weights=weights).fit(images[0])


def test_corrupt_checkpoint(tmp_path, images):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match=r"could not be read as a PyTorch state dict"):
        _named(backbone="resnet18", weights=str(path)).fit(*images)
    torch.save({"model": [1, 2, 3]}, path)
    with pytest.raises(ValueError, match=r"does not hold a state dict"):
        _named(backbone="resnet18", weights=str(path)).fit(*images)


def test_checkpoint_of_another_architecture(tmp_path, images):
    path = tmp_path / "resnet34.pth"
    torch.save(get_model("resnet34", weights=None).state_dict(), path)
    with pytest.raises(ValueError, match=r"does not fit the backbone: .*unexpected keys"):
        _named(backbone="resnet18", weights=str(path)).fit(*images)
    torch.save(get_model("mobilenet_v3_small", weights=None).state_dict(), path)
    with pytest.raises(ValueError, match=r"does not fit the backbone"):
        _named(backbone="resnet18", weights=str(path)).fit(*images)


def test_unknown_weights_name(images):
    with pytest.raises(
        ValueError,
        match=r"weights='IMAGENET9' is neither a weights name of "
        r"backbone='resnet18' \(IMAGENET1K_V1, DEFAULT\)",
    ):
        _named(backbone="resnet18", weights="IMAGENET9").fit(*images)
    with pytest.raises(ValueError, match=r"belongs to another architecture"):
        _named(backbone="resnet34", weights=ResNet18_Weights.DEFAULT).fit(*images)


def test_module_backbone_rejects_enum_weights_and_input_size(vectors):
    with pytest.raises(ValueError, match=r"not valid for a backbone given as a module"):
        FineTunedClassifier(backbone=make_mlp(), weights=ResNet18_Weights.DEFAULT).fit(*vectors)
    with pytest.raises(ValueError, match=r"is not an existing checkpoint file"):
        FineTunedClassifier(backbone=make_mlp(), weights="missing.pth").fit(*vectors)
    with pytest.raises(ValueError, match=r"input_size=32 only applies to a named image backbone"):
        FineTunedClassifier(backbone=make_mlp(), input_size=32).fit(*vectors)


def test_paths_need_a_named_backbone(tmp_path, vectors):
    with pytest.raises(ValueError, match="only a named image backbone reads"):
        FineTunedClassifier(backbone=make_mlp()).fit(["a.png", "b.png"], [0, 1])
    with pytest.raises(ValueError, match=r"2 paths that are not files, e.g. 'a.png'"):
        _named(backbone="resnet18", weights=None).fit(["a.png", "b.png"], [0, 1])


def test_one_path_or_a_folder_as_X(images, tmp_path):
    path = tmp_path / "cat.png"
    Image.fromarray(images[0][0]).save(path)
    ext = PretrainedFeatureExtractor(backbone="resnet18", weights=None, input_size=16)
    msg = f"X={str(path)!r} is a single path; pass a list of paths: [X]."
    for X in (str(path), path):
        with pytest.raises(ValueError, match=re.escape(msg)):
            ext.fit(X)
    msg = f"X={str(tmp_path)!r} is a folder; pass a list of the paths of its image files"
    with pytest.raises(ValueError, match=re.escape(msg)):
        ext.fit(str(tmp_path))
    with pytest.raises(ValueError, match=re.escape(msg)):
        _named(backbone="resnet18", weights=None).fit(tmp_path, [0])


def test_paths_in_a_series_need_a_named_backbone(vectors):
    msg = "X holds file paths (e.g. 'a.png'), which only a named image backbone reads"
    for X in (pd.Series(["a.png", "b.png"]), pd.DataFrame({"path": ["a.png", "b.png"]}), "a.png"):
        with pytest.raises(ValueError, match=re.escape(msg)):
            PretrainedFeatureExtractor(backbone=make_mlp()).fit(X)


def _broken_files(images, folder):
    """A truncated PNG, a truncated JPEG and a text file, by their paths."""
    paths = []
    for name, fmt in (("cut.png", "PNG"), ("cut.jpg", "JPEG")):
        path = str(folder / name)
        Image.fromarray(np.kron(images[0][0], np.ones((4, 4, 1), np.uint8))).save(path, fmt)
        with open(path, "r+b") as file:
            file.truncate(os.path.getsize(path) // 2)
        paths.append(path)
    paths.append(str(folder / "notes.png"))
    with open(paths[-1], "w") as file:
        file.write("not an image")
    return paths


def test_unreadable_image_files_are_named(images, tmp_path):
    good = str(tmp_path / "good.png")
    Image.fromarray(images[0][0]).save(good)
    ext = PretrainedFeatureExtractor(backbone="resnet18", weights=None, input_size=16).fit([good])
    cut_png, cut_jpg, text = _broken_files(images, tmp_path)
    for path, why in ((cut_png, "truncated"), (cut_jpg, "truncated"), (text, "cannot identify")):
        msg = rf"X holds a file that could not be read as an image: {re.escape(repr(path))} .*{why}"
        with pytest.raises(ValueError, match=msg):
            ext.transform([good, path])
        with pytest.raises(ValueError, match=msg):
            _named(backbone="resnet18", weights=None).fit([good, path], [0, 1])
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


@pytest.mark.parametrize(
    "mode, pixels", [("I", [[0, 70000]]), ("F", [[-0.5, 2.0]]), ("F", [[np.nan, 0.5]])]
)
def test_grey_files_out_of_their_range(tmp_path, mode, pixels):
    path = str(tmp_path / "grey.tiff")
    Image.fromarray(np.array(pixels, dtype=np.int32 if mode == "I" else np.float32)).save(path)
    top = "65535" if mode == "I" else "1"
    msg = rf"X holds {re.escape(repr(path))}, a mode '{mode}' image with values in .*; images "
    msg += rf"of that mode must lie in \[0, {top}\]"
    ext = PretrainedFeatureExtractor(backbone="resnet18", weights=None, input_size=16)
    with pytest.raises(ValueError, match=msg):
        ext.fit([path]).transform([path])


def test_list_of_arrays_of_different_sizes(images):
    X = [images[0][0], images[0][1][:15]]
    msg = (
        r"X is a list of arrays of 2 shapes, e.g. \(20, 20, 3\) and \(15, 20, 3\); images in "
        r"an array must share one size. Pass file paths for images of different sizes"
    )
    with pytest.raises(ValueError, match=msg):
        _named(backbone="resnet18", weights=None).fit(X, [0, 1])
    with pytest.raises(ValueError, match=r"of 2 shapes.*takes one array of inputs of one shape"):
        PretrainedFeatureExtractor(backbone=make_mlp()).fit([np.zeros(3), np.zeros(4)])


def _flat_cnn():
    """Convolution, then a linear layer: takes images of one size only."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Flatten(), nn.LazyLinear(5)),
    )


def test_module_predicts_on_input_of_the_fitted_shape(images):
    X, y = images
    X = (X.transpose(0, 3, 1, 2) / 255).astype(np.float32)[..., :8, :8]
    larger = np.zeros((5, 3, 12, 12), dtype=np.float32)
    msg = r"X has shape \(5, 3, 12, 12\), but {} was fitted on input of shape "
    msg += r"\(n_samples, 3, 8, 8\)"
    clf = FineTunedClassifier(backbone=_flat_cnn(), max_epochs=2, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match=msg.format("FineTunedClassifier")):
        clf.predict(larger)
    with pytest.raises(ValueError, match=r"X has shape \(5, 192\), but FineTunedClassifier"):
        clf.predict(larger[:, :, :8, :8].reshape(5, -1))
    ext = PretrainedFeatureExtractor(backbone=_flat_cnn(), random_state=0).fit(X)
    with pytest.raises(ValueError, match=msg.format("PretrainedFeatureExtractor")):
        ext.transform(larger)
    assert clf.predict(X[:5]).shape == ext.transform(X[:5]).shape[:1] == (5,)


def test_predict_checks_feature_count(vectors):
    X, y = vectors
    clf = FineTunedClassifier(backbone=make_mlp(), max_epochs=2).fit(X, y)
    with pytest.raises(
        ValueError, match="X has 5 features, but FineTunedClassifier is expecting 6"
    ):
        clf.predict(X[:, :5])


def test_bad_device(vectors):
    with pytest.raises(ValueError, match=r"device='gpu0' is not a torch device"):
        FineTunedClassifier(backbone=make_mlp(), device="gpu0").fit(*vectors)
