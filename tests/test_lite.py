"""EfficientNet-Lite0 with real ImageNet weights that install from a package."""

import numpy as np
import pytest
import torch
from skimage import data
from torchvision.models import ResNet18_Weights

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor
from sktransfer.backbones import timm as _lite

CATEGORIES = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # ImageNet order


@pytest.fixture(scope="module")
def imagenet_state():
    return _lite.to_timm_layout(torch.load(_lite.default_weights_path(), weights_only=True))


@pytest.fixture(scope="module")
def extractor():
    return PretrainedFeatureExtractor(backbone="efficientnet_lite0").fit(
        np.zeros((1, 8, 8, 3), dtype=np.uint8)
    )


def _top_classes(extractor, state, image, k=2):
    logits = extractor.transform(image[None]) @ state["classifier.weight"].numpy().T
    logits += state["classifier.bias"].numpy()
    return [CATEGORIES[i] for i in np.argsort(-logits[0])[:k]]


def test_real_photos_are_classified_sensibly(extractor, imagenet_state):
    assert set(_top_classes(extractor, imagenet_state, data.chelsea())) & {
        "tiger cat",
        "tabby",
        "Egyptian cat",
    }
    assert _top_classes(extractor, imagenet_state, data.coffee(), k=1)[0] in {"espresso", "cup"}


def test_blocks_reproduce_the_timm_forward(extractor, imagenet_state):
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(imagenet_state, strict=True)
    image = data.coffee()[None]
    x = extractor.backbone_.preprocess(torch.as_tensor(image).permute(0, 3, 1, 2))
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    logits = extractor.transform(image) @ imagenet_state["classifier.weight"].numpy().T
    np.testing.assert_allclose(
        logits + imagenet_state["classifier.bias"].numpy(), expected, atol=1e-4
    )


def test_stem_seven_stages_and_head_conv_are_the_blocks(images):
    X, y = images
    clf = FineTunedClassifier(
        backbone="efficientnet_lite0", input_size=32, unfreeze_depth=2, max_epochs=2, random_state=0
    ).fit(X, y)
    assert clf.n_blocks_ == 9
    blocks = clf.net_.module_.body.blocks
    assert [len(stage) for stage in list(blocks)[1:8]] == list(_lite.STAGE_DEPTHS)
    assert clf.net_.module_.head.in_features == 1280


def test_checkpoints_in_either_layout_load_strictly(tmp_path, imagenet_state, images):
    X, _ = images
    original = torch.load(_lite.default_weights_path(), weights_only=True)
    reference = PretrainedFeatureExtractor(backbone="efficientnet_lite0", input_size=32).fit(X)
    for name, state in [("original.pth", original), ("timm.pth", imagenet_state)]:
        torch.save(state, tmp_path / name)
        ext = PretrainedFeatureExtractor(
            backbone="efficientnet_lite0", weights=str(tmp_path / name), input_size=32
        ).fit(X)
        np.testing.assert_array_equal(ext.transform(X), reference.transform(X))
    truncated = {k: v for k, v in imagenet_state.items() if not k.startswith("blocks.6.")}
    torch.save(truncated, tmp_path / "truncated.pth")
    with pytest.raises(
        ValueError, match=r"does not fit the backbone: \d+ missing keys \['blocks.6.0"
    ):
        PretrainedFeatureExtractor(
            backbone="efficientnet_lite0", weights=str(tmp_path / "truncated.pth")
        ).fit(X)


def test_scratch_lite0_uses_the_same_preprocessing(images):
    X, _ = images
    ext = PretrainedFeatureExtractor(backbone="efficientnet_lite0", weights=None).fit(X)
    preprocess = ext.backbone_.preprocess
    assert (preprocess.size, preprocess.interpolation) == (224, "bicubic")
    np.testing.assert_array_equal(preprocess.mean.flatten().numpy(), [0.5, 0.5, 0.5])
    with pytest.raises(
        ValueError, match=r"weights='IMAGENET1K_V1' is not valid for backbone='efficientnet_lite0'"
    ):
        PretrainedFeatureExtractor(backbone="efficientnet_lite0", weights="IMAGENET1K_V1").fit(X)
