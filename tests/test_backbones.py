"""Named torchvision backbones: blocks, weights from enums and checkpoints, preprocessing."""

import os

import numpy as np
import pytest
import torch
from torchvision.models import ResNet18_Weights, get_model

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor, backbones, list_backbones

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def test_list_backbones():
    names = list_backbones()
    assert {"resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0"} <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize(
    "name, n_blocks, dim",
    [
        ("resnet18", 5, 512),
        ("resnet50", 5, 2048),
        ("mobilenet_v3_small", 13, 576),
        ("efficientnet_b0", 9, 1280),
    ],
)
def test_named_backbones_fit_and_embed(name, n_blocks, dim, images):
    X, y = images
    clf = FineTunedClassifier(
        backbone=name, weights=None, input_size=32, max_epochs=1, batch_size=6, random_state=0
    ).fit(X, y)
    assert clf.n_blocks_ == clf.unfreeze_depth_ == n_blocks
    assert clf.predict(X).shape == (12,)
    features = PretrainedFeatureExtractor(
        backbone=name, weights=None, input_size=32, random_state=0
    ).fit_transform(X)
    assert features.shape == (12, dim)
    assert features.dtype == np.float32


def _checkpoint(tmp_path, name="resnet18"):
    torch.manual_seed(1)
    model = get_model(name, weights=None)
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return model, str(path)


def _reference_features(model, X_uint8):
    """Features computed by hand: scale, normalise, torchvision forward without head."""
    model.fc = torch.nn.Identity()
    x = torch.as_tensor(X_uint8).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return model.eval()((x - IMAGENET_MEAN) / IMAGENET_STD).numpy()


def test_checkpoint_in_torchvision_layout_loads_and_matches_a_plain_forward(tmp_path, images):
    X, y = images
    X = np.ascontiguousarray(np.pad(X, ((0, 0), (6, 6), (6, 6), (0, 0))))  # 32x32, no resize
    model, path = _checkpoint(tmp_path)
    ext = PretrainedFeatureExtractor(backbone="resnet18", weights=path, input_size=32).fit(X)
    np.testing.assert_allclose(ext.transform(X), _reference_features(model, X), atol=1e-5)

    clf = FineTunedClassifier(
        backbone="resnet18", weights=path, input_size=32, unfreeze_depth=0, max_epochs=1
    ).fit(X, y)
    assert torch.equal(
        clf.net_.module_.body.blocks[4][1].conv2.weight, model.layer4[1].conv2.weight
    )


def test_weights_enum_goes_through_torchvision_download(monkeypatch, images, tmp_path):
    model, _ = _checkpoint(tmp_path)
    urls = []

    def cached(url, *args, **kwargs):
        urls.append(url)
        return model.state_dict()

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", cached)
    X, y = images
    for weights in (
        "DEFAULT",
        "IMAGENET1K_V1",
        "ResNet18_Weights.IMAGENET1K_V1",
        ResNet18_Weights.DEFAULT,
    ):
        backbones.PRISTINE.clear()
        ext = PretrainedFeatureExtractor(backbone="resnet18", weights=weights, input_size=32).fit(X)
        assert torch.equal(ext.backbone_.blocks[0][0].weight, model.conv1.weight)
    assert urls == [ResNet18_Weights.IMAGENET1K_V1.url] * 4

    # The next fit with the same weights copies the body loaded last time.
    again = PretrainedFeatureExtractor(backbone="resnet18", input_size=32).fit(X)
    assert len(urls) == 4
    assert torch.equal(again.backbone_.blocks[0][0].weight, model.conv1.weight)
    assert again.backbone_.blocks[0][0].weight is not ext.backbone_.blocks[0][0].weight


def test_bodies_kept_for_the_next_fit_keep_their_memory_format(images, tmp_path):
    X, _ = images
    model, path = _checkpoint(tmp_path)
    backbones.PRISTINE.clear()
    for _ in range(2):  # built, then copied from the bodies kept
        # "auto", the default: channels-last for a named image backbone on a CPU
        for channels_last, expected in ((True, True), (False, False), ("auto", True)):
            ext = PretrainedFeatureExtractor(
                backbone="resnet18", weights=path, input_size=32, channels_last=channels_last
            ).fit(X)
            conv1 = ext.backbone_.blocks[0][0].weight
            assert conv1.is_contiguous(memory_format=torch.channels_last) == expected
            assert conv1.is_contiguous() != expected
            assert torch.equal(conv1, model.conv1.weight)
    assert len(backbones.PRISTINE) == 2


def test_rewritten_checkpoint_is_read_again(images, tmp_path):
    X, _ = images
    model, path = _checkpoint(tmp_path)
    first = PretrainedFeatureExtractor(backbone="resnet18", weights=path, input_size=32).fit(X)
    with torch.no_grad():
        model.conv1.weight.mul_(2)
    torch.save(model.state_dict(), path)
    os.utime(path, ns=(1, 1))  # another mtime, whatever the clock's resolution
    second = PretrainedFeatureExtractor(backbone="resnet18", weights=path, input_size=32).fit(X)
    conv1 = second.backbone_.blocks[0][0].weight
    assert torch.equal(conv1, model.conv1.weight)
    assert torch.equal(conv1, 2 * first.backbone_.blocks[0][0].weight)


def test_preprocessing_follows_the_weights_metadata():
    ext = PretrainedFeatureExtractor(backbone="efficientnet_b0", weights=None)
    ext.fit(np.zeros((2, 8, 8, 3), dtype=np.uint8))
    preprocess = ext.backbone_.preprocess
    assert preprocess.size == 224
    assert preprocess.interpolation == "bicubic"
    np.testing.assert_allclose(preprocess.mean.flatten(), [0.485, 0.456, 0.406])


class _Tied(torch.nn.Module):
    """Parameters and a dict shared between submodules, a plain tensor attribute, a hook."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.a.options = self.b.options = {}  # one empty dict, shared
        self.bn = torch.nn.BatchNorm1d(4)
        self.scale = torch.tensor(2.0)
        self.calls = []
        self.a.register_forward_hook(lambda *args: self.calls.append(1))

    def forward(self, x):
        return self.bn(self.b(self.a(x))) * self.scale


@pytest.mark.parametrize("make", [_Tied, "efficientnet_lite0"])
def test_copy_module_copies_as_deepcopy_does(make, images):
    import copy

    from sktransfer.backbones._common import copy_module

    if make is not _Tied:  # a named backbone as the store keeps it
        model = FineTunedClassifier(backbone=make)._load_backbone(images[0])
    else:
        model = _Tied()
        model.bn.eval()
        model.a.weight.requires_grad_(False)
    copied, reference = copy_module(model), copy.deepcopy(model)
    assert repr(copied) == repr(reference) and type(copied) is type(model)
    state, copied_state = model.state_dict(), copied.state_dict()
    assert state.keys() == copied_state.keys()
    for key, value in state.items():
        assert torch.equal(copied_state[key], value)
        assert copied_state[key].data_ptr() != value.data_ptr() or value.numel() == 0
    modes = [(m.training, type(m)) for m in model.modules()]
    assert [(m.training, type(m)) for m in copied.modules()] == modes
    grads = [p.requires_grad for p in model.parameters()]
    assert [p.requires_grad for p in copied.parameters()] == grads
    if make is _Tied:
        assert copied.b.weight is copied.a.weight  # still tied, and not to the original
        assert copied.a.options is copied.b.options and copied.a.options is not model.a.options
        assert copied.a.weight is not model.a.weight
        assert copied.scale is not model.scale and float(copied.scale) == 2.0
        x = torch.randn(3, 4)
        torch.testing.assert_close(copied(x), model(x), rtol=0, atol=0)
        assert list(copied.a._forward_hooks.values()) == list(model.a._forward_hooks.values())
        assert copied.a._forward_hooks is not model.a._forward_hooks
        with torch.no_grad():
            copied.a.weight.add_(1)
        assert not torch.equal(copied.a.weight, model.a.weight)
