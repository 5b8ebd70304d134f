"""strategy="lora": adapters on the top blocks train, merged into the weights at the end of fit."""

import copy
import pickle
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import timm
import torch
from peft.tuners.lora import LoraLayer
from sklearn.model_selection import GridSearchCV
from torch import nn

from sktransfer import FineTunedClassifier, _strategy
from sktransfer._compat import InvalidParameterError
from sktransfer._modules import Body, TransferModule
from sktransfer._strategy import LoRA, UnfreezeTop

from .conftest import make_mlp

VIT = "timm:vit_tiny_patch16_224"


def _mlp(n_in=6):
    torch.manual_seed(0)
    return make_mlp(n_in)  # blocks: Sequential(Linear, ReLU), widths 16, 12, 8


def _adapter_params(backbone, depth, rank):
    """Parameters of rank-``rank`` adapters on every nn.Linear of the top blocks."""
    blocks = list(backbone.children())[len(backbone) - depth :]
    linears = [m for block in blocks for m in block.modules() if isinstance(m, nn.Linear)]
    return sum(rank * (m.in_features + m.out_features) for m in linears)


def _n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory):
    """A random-init vit_tiny_patch16_224 state dict."""
    torch.manual_seed(1)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    path = tmp_path_factory.mktemp("vit") / "vit_tiny.pth"
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.fixture
def tiny_images():
    """Eight 2-class uint8 images of 32 x 32 pixels."""
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1], 4)
    X = rng.randint(0, 60, size=(8, 32, 32, 3)).astype(np.uint8)
    X[np.arange(8), :, :, y] += 150
    return X, y


def _vit(path, **params):
    common = {"input_size": 32, "batch_size": 4, "max_epochs": 2, "random_state": 0}
    return FineTunedClassifier(backbone=VIT, weights=path, **{**common, **params})


# The strategy on its own


def _body():
    blocks = list(_mlp(4).children())
    body = Body(blocks)
    body.infer_output_dim(torch.zeros(2, 4))
    return body


def test_lora_trains_the_adapters_of_the_top_blocks_only():
    module = TransferModule(_body(), 3, UnfreezeTop(0, 1e-4))
    strategy = LoRA(2, backbone_lr=1e-3, layer_decay=0.5, rank=2, dropout=0.1)
    groups = module.use(strategy)
    trainable = {n for n, p in module.body.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".")[1] for n in trainable} == {"1", "2"}  # blocks 1 and 2, not 0
    assert [(g["name"], g["lr"]) for g in groups] == [("blocks.2", 1e-3), ("blocks.1", 5e-4)]
    assert sum(p.numel() for g in groups for p in g["params"]) == 2 * (16 + 12) + 2 * (12 + 8)
    assert strategy.cut(3) == 1
    # Everything stays in eval but the adapters' dropout.
    module.train()
    dropouts = [
        d
        for m in module.body.modules()
        if isinstance(m, LoraLayer)
        for d in m.lora_dropout.values()
    ]
    assert len(dropouts) == 2 and all(d.training for d in dropouts)
    leaves = [m for m in module.body.modules() if not list(m.children())]
    assert not any(m.training for m in leaves if not any(m is d for d in dropouts))


def test_lora_without_dropout_keeps_the_whole_body_in_eval():
    module = TransferModule(_body(), 3, LoRA(1, backbone_lr=1e-3))
    module.train()
    assert not any(m.training for m in module.body.modules())


def test_adapters_survive_deepcopy_and_merge_to_the_same_function():
    module = TransferModule(_body(), 3, LoRA(2, backbone_lr=1e-3))
    with torch.no_grad():  # adapters away from their start (B = 0)
        for layer in (m for m in module.modules() if isinstance(m, LoraLayer)):
            layer.lora_B["default"].weight.normal_()
    x = torch.randn(5, 4)
    module.eval()
    with torch.no_grad():
        expected = module(x)
        copied = copy.deepcopy(module)
        np.testing.assert_array_equal(copied(x).numpy(), expected.numpy())
        module.finish(LoRA(2, backbone_lr=1e-3))
        assert not any(isinstance(m, LoraLayer) for m in module.modules())
        assert all(type(block[0]) is nn.Linear for block in module.body.blocks)
        np.testing.assert_allclose(module(x).numpy(), expected.numpy(), atol=1e-6)


def test_1x1_convolutions_get_adapters_and_merge():
    blocks = [
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1, groups=2), nn.Conv2d(8, 6, 1)
        ),
    ]
    body = Body(blocks)
    body.infer_output_dim(torch.zeros(2, 3, 5, 5))
    strategy = LoRA(2, backbone_lr=1e-3, rank=2)
    assert strategy.targets(body) == ["0.0", "1.0.2"]  # not 3x3, not grouped
    module = TransferModule(body, 3, strategy)
    with torch.no_grad():
        for layer in (m for m in module.modules() if isinstance(m, LoraLayer)):
            layer.lora_B["default"].weight.normal_()
    x = torch.randn(4, 3, 5, 5)
    module.eval()
    with torch.no_grad():
        expected = module(x)
        module.finish(strategy)
        assert [type(m) for m in module.body.blocks[2]] == [nn.Conv2d] * 3
        np.testing.assert_allclose(module(x).numpy(), expected.numpy(), atol=1e-6)


# The estimator


def test_lora_counts_adapters_and_head(vectors):
    X, y = vectors
    params = {"unfreeze_depth": 2, "max_epochs": 3, "lr": 1e-2, "random_state": 0}
    lora = FineTunedClassifier(backbone=_mlp(), strategy="lora", lora_rank=2, **params).fit(X, y)
    unfreeze = FineTunedClassifier(backbone=_mlp(), **params).fit(X, y)
    head = 8 * 2 + 2
    adapters = _adapter_params(_mlp(), 2, 2)
    assert lora.n_trainable_params_ == {"warmup": head, "finetune": adapters + head}
    assert lora.n_trainable_params_["finetune"] < unfreeze.n_trainable_params_["finetune"]
    assert [r["phase"] for r in lora.history_] == ["warmup", "finetune", "finetune"]
    assert lora.unfreeze_depth_ == 2
    # Fitted: plain torch modules, the backbone's own layers.
    assert not any(isinstance(m, LoraLayer) for m in lora.net_.module_.modules())
    assert _n_params(lora.net_.module_) == _n_params(_mlp()) + head


def test_a_lora_model_is_freed_as_soon_as_it_is_dropped(vectors):
    # No reference cycle holds the layers that adapters were put on.
    import gc
    import weakref

    X, y = vectors
    clf = FineTunedClassifier(backbone=_mlp(), strategy="lora", unfreeze_depth=2, max_epochs=3)
    gc.collect()
    gc.disable()  # no collection may free a cycle
    try:
        clf.fit(X, y)
        layers = [m for m in clf.net_.module_.modules() if isinstance(m, nn.Linear)]
        refs = [weakref.ref(m) for m in (clf.net_.module_, *layers)]
        del clf, layers
        assert [ref() for ref in refs] == [None] * len(refs)
    finally:
        gc.enable()


@pytest.mark.parametrize("frozen_cache", [True, False])
def test_merged_model_predicts_as_the_unmerged_one(vectors, monkeypatch, frozen_cache):
    X, y = vectors
    params = {
        "backbone": _mlp(),
        "strategy": "lora",
        "unfreeze_depth": 2,
        "max_epochs": 3,
        "lr": 1e-2,
        "backbone_lr": 1e-2,
        "frozen_cache": frozen_cache,
        "random_state": 0,
    }
    merged = FineTunedClassifier(**params).fit(X, y)
    monkeypatch.setattr(_strategy, "merge_adapters", lambda body: None)
    unmerged = FineTunedClassifier(**params).fit(X, y)
    layers = [m for m in unmerged.net_.module_.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 2
    assert all(m.lora_B["default"].weight.abs().max() > 0 for m in layers)  # they trained
    difference = np.abs(merged.predict_proba(X) - unmerged.predict_proba(X)).max()
    print(f"merged vs unmerged: max abs difference {difference:.3g}")
    assert difference < 1e-6


@pytest.mark.parametrize("lora_dropout", [0.0, 0.3])
def test_cache_on_and_off_give_the_same_lora_model(vectors, lora_dropout):
    X, y = vectors
    common = {
        "strategy": "lora",
        "unfreeze_depth": 2,
        "lora_dropout": lora_dropout,
        "max_epochs": 4,
        "batch_size": 16,
        "backbone_lr": 1e-2,
        "random_state": 0,
    }
    on = FineTunedClassifier(backbone=_mlp(), frozen_cache=True, **common).fit(X, y)
    off = FineTunedClassifier(backbone=_mlp(), frozen_cache=False, **common).fit(X, y)
    np.testing.assert_allclose(on.predict_proba(X), off.predict_proba(X), atol=1e-6)
    losses_on = [row["train_loss"] for row in on.history_]
    losses_off = [row["train_loss"] for row in off.history_]
    np.testing.assert_allclose(losses_on, losses_off, rtol=1e-5)


def test_lora_fits_are_reproducible(vectors):
    X, y = vectors
    params = {"strategy": "lora", "unfreeze_depth": 2, "max_epochs": 3, "random_state": 3}
    first = FineTunedClassifier(backbone=_mlp(), **params).fit(X, y)
    second = FineTunedClassifier(backbone=_mlp(), **params).fit(X, y)
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))


def test_grid_search_over_strategy_and_depth_with_scratch(vectors):
    X, y = vectors
    clf = FineTunedClassifier(backbone=_mlp(), lr=1e-2, max_epochs=3, random_state=0)
    grid = [
        {"strategy": ["unfreeze", "lora"], "unfreeze_depth": [1, 2]},
        {"weights": [None]},
    ]
    search = GridSearchCV(clf, grid, cv=2).fit(X, y)
    scores = search.cv_results_["mean_test_score"]
    assert len(scores) == 5 and np.isfinite(scores).all()


LOADER = textwrap.dedent(
    """
    import pickle, sys
    import numpy as np

    sys.modules["peft"] = None  # import peft raises ImportError
    with open(sys.argv[1], "rb") as f:
        clf = pickle.load(f)
    np.save(sys.argv[3], clf.predict_proba(np.load(sys.argv[2])))
    assert "peft" not in {m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}
    """
)


def test_fitted_lora_model_loads_and_predicts_without_peft(tmp_path, vit_checkpoint, tiny_images):
    X, y = tiny_images
    clf = _vit(vit_checkpoint, strategy="lora", unfreeze_depth=2, backbone_lr=1e-3).fit(X, y)
    expected = clf.predict_proba(X)
    model, data, out = tmp_path / "model.pkl", tmp_path / "X.npy", tmp_path / "proba.npy"
    model.write_bytes(pickle.dumps(clf))
    np.save(data, X)
    subprocess.run([sys.executable, "-c", LOADER, *map(str, (model, data, out))], check=True)
    np.testing.assert_array_equal(np.load(out), expected)


def test_vit_lora_trains_far_fewer_parameters_than_unfreezing(vit_checkpoint, tiny_images):
    X, y = tiny_images
    lora = _vit(vit_checkpoint, strategy="lora", unfreeze_depth=2).fit(X, y)
    unfreeze = _vit(vit_checkpoint, unfreeze_depth=2).fit(X, y)
    # unfreeze_depth=2: the last transformer block and the final norm; LoRA
    # adapts the block's qkv, proj, fc1 and fc2 (the norm has no Linear).
    head = 192 * 2 + 2
    adapters = 8 * ((192 + 576) + (192 + 192) + (192 + 768) + (768 + 192))
    assert lora.n_trainable_params_["finetune"] == adapters + head
    print(
        f"{VIT}, unfreeze_depth=2: finetune trains {lora.n_trainable_params_['finetune']} "
        f"parameters with LoRA, {unfreeze.n_trainable_params_['finetune']} unfrozen"
    )
    assert lora.n_trainable_params_["finetune"] * 10 < unfreeze.n_trainable_params_["finetune"]
    assert np.isfinite(lora.predict_proba(X)).all()
    assert not any(isinstance(m, LoraLayer) for m in lora.net_.module_.modules())


def test_vit_merged_model_predicts_as_the_unmerged_one(vit_checkpoint, tiny_images, monkeypatch):
    X, y = tiny_images
    params = {"strategy": "lora", "unfreeze_depth": 3, "backbone_lr": 1e-2}
    merged = _vit(vit_checkpoint, **params).fit(X, y)
    monkeypatch.setattr(_strategy, "merge_adapters", lambda body: None)
    unmerged = _vit(vit_checkpoint, **params).fit(X, y)
    layers = [m for m in unmerged.net_.module_.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 8  # qkv, proj, fc1, fc2 of the last two transformer blocks
    assert all(m.lora_B["default"].weight.abs().max() > 0 for m in layers)  # they trained
    difference = np.abs(merged.predict_proba(X) - unmerged.predict_proba(X)).max()
    print(f"{VIT}: merged vs unmerged, max abs difference {difference:.3g}")
    assert difference < 1e-6


# Errors


def test_lora_with_weights_none_is_refused(vectors):
    clf = FineTunedClassifier(backbone=_mlp(), weights=None, strategy="lora")
    msg = "strategy='lora' adds adapters to pretrained weights, but weights=None"
    with pytest.raises(ValueError, match=re.escape(msg)):
        clf.fit(*vectors)
    assert not hasattr(clf, "n_features_in_")


def test_lora_without_peft_says_what_to_install(vectors, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    clf = FineTunedClassifier(backbone=_mlp(), strategy="lora")
    with pytest.raises(ImportError, match=re.escape('pip install "sktransfer[lora]"')):
        clf.fit(*vectors)
    # strategy="unfreeze" needs no peft.
    FineTunedClassifier(backbone=_mlp(), max_epochs=2).fit(*vectors)


def test_top_blocks_without_adaptable_layers_are_refused(vectors):
    backbone = nn.Sequential(*_mlp().children(), nn.Sequential(nn.BatchNorm1d(8), nn.ReLU()))
    clf = FineTunedClassifier(backbone=backbone, strategy="lora", unfreeze_depth=1)
    msg = (
        "strategy='lora' adapts nn.Linear and 1x1 nn.Conv2d layers, but the top "
        "unfreeze_depth=1 blocks of the backbone module (Sequential, and the pooling) have "
        "none; use a larger unfreeze_depth or strategy='unfreeze'."
    )
    with pytest.raises(ValueError, match=re.escape(msg)):
        clf.fit(*vectors)
    # One block more reaches a Linear.
    clf.set_params(unfreeze_depth=2, max_epochs=2).fit(*vectors)
    assert clf.n_trainable_params_["finetune"] == 8 * (12 + 8) + 8 * 2 + 2


def test_vit_norm_block_alone_is_refused(vit_checkpoint, tiny_images):
    clf = _vit(vit_checkpoint, strategy="lora", unfreeze_depth=1)
    msg = f"the top unfreeze_depth=1 blocks of {VIT} (LayerNorm, and the pooling) have none"
    with pytest.raises(ValueError, match=re.escape(msg)):
        clf.fit(*tiny_images)


@pytest.mark.parametrize(
    "param, value, valid",
    [
        ("strategy", "adapters", "a str among ['lora', 'unfreeze']"),
        ("lora_rank", 0, "an int in the range [1, inf)"),
        ("lora_rank", 2.0, "an int in the range [1, inf)"),
        ("lora_alpha", 0, "a float in the range (0, inf)"),
        ("lora_dropout", 1.0, "a float in the range [0, 1)"),
        ("lora_dropout", -0.1, "a float in the range [0, 1)"),
    ],
)
def test_invalid_lora_parameters_are_named(vectors, param, value, valid):
    clf = FineTunedClassifier(backbone=_mlp(), **{"strategy": "lora", param: value})
    msg = f"The {param!r} parameter of FineTunedClassifier must be {valid}. Got {value!r} instead."
    with pytest.raises(InvalidParameterError, match=re.escape(msg)):
        clf.fit(*vectors)
