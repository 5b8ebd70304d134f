"""Any timm model as ``backbone="timm:<name>"``: blocks, features, weights, input sizes.

Checkpoints are written from timm's random initialisation; nothing is
downloaded (``"DEFAULT"`` is tested offline, with the network watched).
"""

import pickle
import socket

import huggingface_hub
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor, backbones
from sktransfer.backbones import timm as timm_family


def _checkpoint(tmp_path, name, **kwargs):
    """A timm model at random and the path of its state dict."""
    torch.manual_seed(1)
    model = timm.create_model(name, pretrained=False, **kwargs)
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return model, str(path)


def _native_images(model, n=2):
    size = model.pretrained_cfg["input_size"][-1]
    return np.random.RandomState(0).randint(0, 256, size=(n, size, size, 3)).astype(np.uint8)


@pytest.mark.parametrize(
    "name, n_blocks, dim",
    [
        ("resnet18", 5, 512),  # stem, layer1..4
        ("convnext_atto", 5, 320),  # stem, 4 stages (norm_pre is Identity)
        ("regnetx_002", 5, 368),  # stem, s1..s4 (final_conv is Identity)
        ("efficientnet_b0", 9, 1280),  # stem, 7 stages, conv_head/bn2
        ("mobilenetv3_small_050", 7, 1024),  # stem, 6 stages; conv_head in the pooling
        ("vit_tiny_patch16_224", 14, 192),  # token stem, 12 blocks, norm
        ("deit_tiny_patch16_224", 14, 192),
    ],
)
def test_features_equal_timms_forward_head_at_native_size(tmp_path, name, n_blocks, dim):
    model, path = _checkpoint(tmp_path, name)
    X = _native_images(model)
    ext = PretrainedFeatureExtractor(backbone=f"timm:{name}", weights=path).fit(X)
    body = ext.backbone_
    assert len(body.blocks) == n_blocks
    x = body.preprocess(torch.as_tensor(X).permute(0, 3, 1, 2))
    with torch.no_grad():
        expected = model.eval().forward_head(model.forward_features(x), pre_logits=True)
    features = ext.transform(X)
    assert features.shape == (2, dim)
    difference = np.abs(features - expected.numpy()).max()
    print(f"timm:{name}: {n_blocks} blocks, max abs difference {difference:.3g}")
    assert difference < 1e-5
    # Every parameter but the classifier's is held once, by a block or the pooling.
    in_blocks = {id(p) for p in body.blocks.parameters()}
    assert in_blocks.isdisjoint(id(p) for p in body.pool.parameters())
    n_classifier = sum(p.numel() for p in model.get_classifier().parameters())
    n_model = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in body.parameters()) == n_model - n_classifier


def test_preprocessing_comes_from_the_pretrained_cfg(images):
    X, _ = images
    ext = PretrainedFeatureExtractor(backbone="timm:test_vit", weights=None).fit(X)
    cfg = timm.create_model("test_vit").pretrained_cfg
    preprocess = ext.backbone_.preprocess
    assert (preprocess.size, preprocess.interpolation) == (160, cfg["interpolation"])
    np.testing.assert_allclose(preprocess.mean.flatten().numpy(), cfg["mean"], rtol=1e-6)
    np.testing.assert_allclose(preprocess.std.flatten().numpy(), cfg["std"], rtol=1e-6)


def test_blocks_leave_the_model_as_it_is_and_share_its_parameters():
    spec = backbones.named_spec("timm:test_vit")
    model = spec.build_model().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    blocks = spec.blocks(model)
    assert all(module.training for module in model.modules())
    assert dict(model.named_parameters()) == params
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    stem = blocks[0]
    assert stem.cls_token is model.cls_token and stem.pos_embed is model.pos_embed
    # Loading copies into the same Parameter objects: the stem sees the values.
    model.load_state_dict({**state, "cls_token": torch.full_like(state["cls_token"], 3.0)})
    assert torch.equal(stem.cls_token, torch.full_like(state["cls_token"], 3.0))
    pool = spec.pool(model)
    assert model.cls_token is None and model.pos_embed is None
    assert isinstance(model.blocks, torch.nn.Identity)
    assert isinstance(model.get_classifier(), torch.nn.Identity)
    assert pool.model is model


def test_a_split_that_differs_from_forward_features_is_refused(monkeypatch):
    monkeypatch.setattr(timm_family, "_SPLITS_CHECKED", set())  # as if built for the first time
    spec = backbones.named_spec("timm:test_resnet")
    model = spec.build_model()
    original = model.forward_features
    monkeypatch.setattr(model, "forward_features", lambda x: 2 * original(x))
    with pytest.raises(
        ValueError,
        match=r"backbone='timm:test_resnet' \(ResNet\) looks like a ResNet .* do not "
        r"reproduce its forward_features \(max abs difference",
    ):
        spec.blocks(model)


def test_an_architectures_split_is_checked_once_in_a_process(monkeypatch):
    monkeypatch.setattr(timm_family, "_SPLITS_CHECKED", set())
    checks, check_split = [], timm_family.check_split
    monkeypatch.setattr(timm_family, "check_split", lambda *a: checks.append(1) or check_split(*a))
    spec = backbones.named_spec("timm:test_resnet")
    first, second = spec.blocks(spec.build_model()), spec.blocks(spec.build_model())
    assert len(checks) == 1 and len(first) == len(second)
    other = backbones.named_spec("timm:test_efficientnet")
    other.blocks(other.build_model())
    assert len(checks) == 2


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "test_vit_relpos",
            r"'timm:test_vit_relpos' \(VisionTransformerRelPos\) has no layout sktransfer "
            r"can split into blocks. Supported layouts: vision transformer .*; ResNet .*; "
            r"RegNet .*; stem and stages .*; EfficientNet .*; MobileNetV3",
        ),
        (
            "deit_tiny_distilled_patch16_224",
            r"'timm:deit_tiny_distilled_patch16_224' has a distillation token",
        ),
        ("eva02_tiny_patch14_224", r"'timm:eva02_tiny_patch14_224' has a rotary position"),
    ],
)
def test_layouts_it_cannot_split_are_refused_by_name(name, message, images):
    X, _ = images
    with pytest.raises(ValueError, match=message):
        PretrainedFeatureExtractor(backbone=f"timm:{name}", weights=None).fit(X)


def test_names_and_unknown_models(images):
    X, _ = images
    assert timm_family.PREFIX == "timm:"
    assert timm_family.names() == ["efficientnet_lite0"]
    assert timm_family.spec("resnet18") is None
    assert backbones.is_backbone_name("timm:convnext_atto")
    assert backbones.named_spec("timm:convnext_atto").name == "timm:convnext_atto"
    with pytest.raises(
        ValueError,
        match=r"backbone='timm:vit_tinny_patch16_224': timm has no model "
        r"'vit_tinny_patch16_224' \(close: vit_tiny_patch16_224.*\); find its models "
        r"with timm.list_models\('\*vit\*'\)",
    ):
        PretrainedFeatureExtractor(backbone="timm:vit_tinny_patch16_224").fit(X)
    with pytest.raises(ValueError, match=r"Invalid pretrained tag \(nope\) for resnet18"):
        PretrainedFeatureExtractor(backbone="timm:resnet18.nope").fit(X)
    with pytest.raises(ValueError, match=r"use one of \[.*\] or 'timm:<name>'"):
        backbones.named_spec("resnet_18")


@pytest.fixture
def offline(monkeypatch):
    """The Hugging Face Hub offline, and every attempt to reach a host recorded."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("no network in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_default_weights_offline_say_which_file_to_get(offline, images):
    X, _ = images
    with pytest.raises(
        RuntimeError,
        match=r"pretrained weights for backbone='timm:resnet18' \(tag 'a1_in1k', from the "
        r"Hugging Face Hub repository 'timm/resnet18.a1_in1k'\).*model.safetensors.*"
        r"weights='/path/to/file'",
    ):
        PretrainedFeatureExtractor(backbone="timm:resnet18").fit(X)
    assert offline == []


def test_default_weights_come_through_timm_create_model(monkeypatch, tmp_path, images):
    X, _ = images
    pretrained, path = _checkpoint(tmp_path, "test_resnet")
    create_model = timm.create_model
    calls = []

    def create(name, pretrained=False, **kwargs):
        calls.append((name, pretrained))
        model = create_model(name, pretrained=False, **kwargs)
        if pretrained:  # what timm's download would give
            model.load_state_dict(torch.load(path, weights_only=True))
        return model

    monkeypatch.setattr(timm, "create_model", create)
    spec = backbones.named_spec("timm:test_resnet")
    first, second = spec.resolve_weights("DEFAULT"), spec.resolve_weights("DEFAULT")
    assert first.source == second.source == ("timm", "test_resnet", "r160_in1k")
    assert calls == []  # resolving downloads nothing
    ext = PretrainedFeatureExtractor(backbone="timm:test_resnet", input_size=32).fit(X)
    assert ("test_resnet", True) in calls
    assert ext.backbone_.source == ("timm:test_resnet", first.source)
    from_file = PretrainedFeatureExtractor(
        backbone="timm:test_resnet", weights=path, input_size=32
    ).fit(X)
    np.testing.assert_array_equal(ext.transform(X), from_file.transform(X))


def test_weights_files_load_strictly_apart_from_the_classifier(tmp_path, images):
    X, _ = images
    model, path = _checkpoint(tmp_path, "test_convnext")  # classifier: head.fc
    reference = PretrainedFeatureExtractor(
        backbone="timm:test_convnext", weights=path, input_size=32
    ).fit(X)
    other_head = {**model.state_dict(), "head.fc.weight": torch.zeros(10, 64)}
    other_head["head.fc.bias"] = torch.zeros(10)
    save_file(other_head, str(tmp_path / "other_head.safetensors"))
    ext = PretrainedFeatureExtractor(
        backbone="timm:test_convnext",
        weights=str(tmp_path / "other_head.safetensors"),
        input_size=32,
    ).fit(X)
    np.testing.assert_array_equal(ext.transform(X), reference.transform(X))
    no_norm = {k: v for k, v in model.state_dict().items() if k != "head.norm.weight"}
    torch.save(no_norm, tmp_path / "no_norm.pth")
    with pytest.raises(
        ValueError, match=r"does not fit the backbone: 1 missing keys \['head.norm.weight'\]"
    ):
        PretrainedFeatureExtractor(
            backbone="timm:test_convnext", weights=str(tmp_path / "no_norm.pth")
        ).fit(X)


def test_weights_it_does_not_know_are_refused(images):
    X, _ = images
    with pytest.raises(ValueError, match=r"weights='IMAGENET1K_V1' is not valid for backbone="):
        PretrainedFeatureExtractor(backbone="timm:test_resnet", weights="IMAGENET1K_V1").fit(X)
    with pytest.raises(
        ValueError, match=r"timm has no pretrained weights for backbone='timm:convnext_atto_rms'"
    ):
        PretrainedFeatureExtractor(backbone="timm:convnext_atto_rms").fit(X)


def test_vision_transformers_take_multiples_of_their_patch_size(images):
    X, _ = images
    name = "timm:vit_tiny_patch16_224"  # timm's default build has a fixed size
    ext = PretrainedFeatureExtractor(backbone=name, weights=None, input_size=32)
    assert ext.fit_transform(X).shape == (12, 192)
    assert ext.backbone_.blocks[0].dynamic
    with pytest.raises(
        ValueError,
        match=r"input_size=40: backbone='timm:vit_tiny_patch16_224' cuts images into 16 px "
        r"patches; use a multiple of 16",
    ):
        PretrainedFeatureExtractor(backbone=name, weights=None, input_size=40).fit(X)


def test_a_fixed_size_vision_transformer_refuses_other_sizes(monkeypatch, images):
    X, _ = images
    create_model = timm.create_model

    def without_dynamic_size(name, dynamic_img_size=False, **kwargs):
        if dynamic_img_size:
            raise TypeError("unexpected keyword argument 'dynamic_img_size'")
        return create_model(name, dynamic_img_size=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", without_dynamic_size)
    ext = PretrainedFeatureExtractor(backbone="timm:test_vit", weights=None).fit(X)
    assert not ext.backbone_.blocks[0].dynamic
    assert ext.transform(X).shape == (12, 64)
    with pytest.raises(
        ValueError,
        match=r"input_size=32: backbone='timm:test_vit' takes 160x160 px images only.*"
        r"use input_size=None or 160",
    ):
        PretrainedFeatureExtractor(backbone="timm:test_vit", weights=None, input_size=32).fit(X)


def test_fine_tuning_a_cnn_at_another_size(tmp_path, images):
    X, y = images
    _, path = _checkpoint(tmp_path, "convnext_atto")
    clf = FineTunedClassifier(
        backbone="timm:convnext_atto",
        weights=path,
        input_size=32,
        unfreeze_depth=2,
        max_epochs=2,
        random_state=0,
    ).fit(X, y)
    assert (clf.n_blocks_, clf.unfreeze_depth_) == (5, 2)
    assert clf.predict(X).shape == (12,)
    blocks = clf.net_.module_.body.blocks
    assert not any(p.requires_grad for p in blocks[2].parameters())
    assert all(p.requires_grad for p in blocks[4].parameters() if p.ndim > 1)


def test_fine_tuning_a_vision_transformer_at_native_size(tmp_path, images):
    X, y = images
    X, y = X[::2], y[::2]  # 6 images
    _, path = _checkpoint(tmp_path, "vit_tiny_patch16_224")
    clf = FineTunedClassifier(
        backbone="timm:vit_tiny_patch16_224",
        weights=path,
        unfreeze_depth=2,
        max_epochs=2,
        batch_size=4,
        random_state=0,
    ).fit(X, y)
    assert (clf.n_blocks_, clf.unfreeze_depth_) == (14, 2)
    assert set(clf.predict(X)) <= {0, 1, 2}
    blocks = clf.net_.module_.body.blocks
    assert not any(p.requires_grad for p in blocks[0].parameters())  # tokens included
    assert all(p.requires_grad for p in blocks[12].parameters())


def test_a_fitted_timm_extractor_pickles(images):
    X, _ = images
    ext = PretrainedFeatureExtractor(backbone="timm:test_vit", weights=None, input_size=32)
    features = ext.fit_transform(X)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(ext)).transform(X), features)
