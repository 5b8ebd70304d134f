"""Mixed precision and channels-last memory format, for GPU users (run here on CPU)."""

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor
from sktransfer._cache import frozen_outputs
from sktransfer._compat import InvalidParameterError

from .conftest import make_cnn


def _cnn_data(images):
    X, y = images
    return (X.transpose(0, 3, 1, 2) / 255).astype(np.float32), y


def _record_conv_dtypes(module):
    """Record the dtype of every Conv2d output of ``module`` (and of its copies)."""
    dtypes = []
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            sub.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    return dtypes


def _remove_hooks(module):
    for sub in module.modules():
        sub._forward_hooks.clear()


COMMON = {"max_epochs": 3, "batch_size": 4, "unfreeze_depth": 2, "lr": 1e-2, "random_state": 0}


def _conv_layouts(module):
    """Whether each Conv2d weight of ``module`` is channels-last (and not contiguous)."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    assert convs
    return {
        (c.weight.is_contiguous(memory_format=torch.channels_last), c.weight.is_contiguous())
        for c in convs
    }


@pytest.mark.parametrize("frozen_cache", [True, False])
def test_channels_last_gives_the_same_model(images, frozen_cache):
    X, y = _cnn_data(images)
    common = {**COMMON, "frozen_cache": frozen_cache}
    plain = FineTunedClassifier(backbone=make_cnn(), channels_last=False, **common).fit(X, y)
    fast = FineTunedClassifier(backbone=make_cnn(), channels_last=True, **common).fit(X, y)
    auto = FineTunedClassifier(backbone=make_cnn(), **common).fit(X, y)  # a module: as it is
    assert _conv_layouts(plain.net_.module_) == _conv_layouts(auto.net_.module_) == {(False, True)}
    assert _conv_layouts(fast.net_.module_) == {(True, False)}
    np.testing.assert_allclose(fast.predict_proba(X), plain.predict_proba(X), atol=1e-5)
    np.testing.assert_array_equal(auto.predict_proba(X), plain.predict_proba(X))


def test_the_top_blocks_get_their_gradient_channels_last():
    """Pooling broadcasts its gradient back over the map; a channels-last body
    hands it to the blocks channels-last, and the gradients are the same."""
    from sktransfer._modules import Body

    body = Body(list(make_cnn())).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    seen = []  # the gradient of the last block's output, as its backward gets it
    body.blocks[-1].register_full_backward_hook(lambda m, g_in, g_out: seen.append(g_out[0]))
    body.run_from(x, 0).square().sum().backward()
    assert len(seen) == 1 and seen[0].is_contiguous(memory_format=torch.channels_last)
    assert not seen[0].is_contiguous()
    grads = [p.grad.clone() for p in body.parameters()]
    body.zero_grad()
    a = x
    for block in body.blocks:
        a = block(a)
    body.pool(a).square().sum().backward()  # pooled without it
    assert seen[1].stride() != seen[0].stride()
    for grad, p in zip(grads, body.parameters()):
        torch.testing.assert_close(grad, p.grad, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # nothing to lay out without gradients
        torch.testing.assert_close(body.run_from(x, 0), body.pool(a), rtol=0, atol=0)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
@pytest.mark.parametrize("frozen_cache", [True, False])
def test_mixed_precision_trains_in_that_dtype(images, precision, frozen_cache):
    X, y = _cnn_data(images)
    reference = FineTunedClassifier(backbone=make_cnn(), **COMMON).fit(X, y)
    backbone = make_cnn()
    dtypes = _record_conv_dtypes(backbone)  # the hooks travel into fit's copy
    clf = FineTunedClassifier(
        backbone=backbone, precision=precision, frozen_cache=frozen_cache, **COMMON
    ).fit(X, y)
    n_training = len(dtypes)
    proba = clf.predict_proba(X)
    _remove_hooks(clf.net_.module_)
    _remove_hooks(backbone)
    # One float32 pass sizes the backbone's output when fit builds it; every
    # conv after that, in training and in prediction, runs in ``precision``.
    n_convs = sum(isinstance(m, nn.Conv2d) for m in backbone.modules())
    assert dtypes[:n_convs] == [torch.float32] * n_convs
    assert n_training > n_convs and len(dtypes) > n_training
    assert set(dtypes[n_convs:]) == {getattr(torch, precision)}
    assert proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    # Same recipe, same data: a lower-precision run lands near the float32 one.
    assert np.abs(proba - reference.predict_proba(X)).max() < 0.1
    assert clf.score(X, y) == reference.score(X, y)
    # float16 scales the loss; its GradScaler state does not travel with the model.
    assert isinstance(clf.net_.grad_scaler_, torch.amp.GradScaler) == (precision == "float16")
    assert pickle.loads(pickle.dumps(clf)).net_.grad_scaler_ is None


def test_float16_cache_holds_half_the_bytes(images):
    X, y = _cnn_data(images)
    body = FineTunedClassifier(backbone=make_cnn())._load_backbone(X)
    pooled32, acts32 = frozen_outputs(body, X, 2, 4, "cpu")
    pooled16, acts16 = frozen_outputs(body, X, 2, 4, "cpu", precision="float16")
    assert acts32.dtype == np.float32 and acts16.dtype == np.float16
    assert acts16.nbytes * 2 == acts32.nbytes
    assert pooled16.dtype == np.float32
    np.testing.assert_allclose(acts16, acts32, atol=1e-2)


def test_extractor_precision_and_channels_last(images):
    X, _ = _cnn_data(images)
    plain_extractor = PretrainedFeatureExtractor(backbone=make_cnn(), channels_last=False)
    plain = plain_extractor.fit_transform(X)
    assert _conv_layouts(plain_extractor.backbone_) == {(False, True)}
    auto = PretrainedFeatureExtractor(backbone=make_cnn())  # a module: as it is
    assert _conv_layouts(auto.fit(X).backbone_) == {(False, True)}
    fast = PretrainedFeatureExtractor(backbone=make_cnn(), channels_last=True).fit_transform(X)
    np.testing.assert_allclose(fast, plain, atol=1e-5)
    np.testing.assert_array_equal(auto.transform(X), plain)
    half = PretrainedFeatureExtractor(backbone=make_cnn(), precision="bfloat16")
    features = half.fit_transform(X)
    assert features.dtype == np.float32
    np.testing.assert_allclose(features, plain, atol=0.05)
    assert not np.array_equal(features, plain)


@pytest.mark.parametrize("Estimator", [FineTunedClassifier, PretrainedFeatureExtractor])
def test_unknown_precision_is_refused(images, Estimator):
    X, y = _cnn_data(images)
    with pytest.raises(InvalidParameterError, match="'precision' parameter .* Got 'half'"):
        Estimator(backbone=make_cnn(), precision="half").fit(X, y)


@pytest.mark.parametrize("Estimator", [FineTunedClassifier, PretrainedFeatureExtractor])
def test_unknown_channels_last_is_refused(images, Estimator):
    X, y = _cnn_data(images)
    with pytest.raises(InvalidParameterError, match="channels_last.*'yes'"):
        Estimator(backbone=make_cnn(), channels_last="yes").fit(X, y)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_by_name_runs_fused_with_the_same_result(images, optimizer):
    X, y = _cnn_data(images)
    fused = FineTunedClassifier(backbone=make_cnn(), optimizer=optimizer, **COMMON).fit(X, y)
    assert fused.net_.optimizer_.defaults["fused"] is True
    cls = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
    plain = FineTunedClassifier(backbone=make_cnn(), optimizer=cls, **COMMON).fit(X, y)
    assert not plain.net_.optimizer_.defaults["fused"]
    np.testing.assert_allclose(fused.predict_proba(X), plain.predict_proba(X), atol=1e-5)


class _Flatten4d(nn.Module):
    """Flattens with ``view``, which needs contiguous 4-D tensors."""

    def forward(self, x):
        return x.view(x.size(0), -1)


@pytest.mark.parametrize("Estimator", [FineTunedClassifier, PretrainedFeatureExtractor])
def test_modules_keep_their_layout_by_default(Estimator):
    """ "auto" leaves a module's tensors as they are: its code may need them so."""
    rng = np.random.RandomState(0)
    y = np.arange(12) % 2
    volumes = nn.Sequential(
        nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten()),
    )
    lenet = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), nn.Sequential(_Flatten4d(), nn.ReLU())
    )
    params = {"max_epochs": 2, "batch_size": 4} if Estimator is FineTunedClassifier else {}

    def fit_and_run(backbone, X, **extra):
        fitted = Estimator(backbone=backbone, **params, **extra).fit(X, y)
        return fitted.predict_proba(X) if Estimator is FineTunedClassifier else fitted.transform(X)

    for backbone, X in [
        (volumes, rng.rand(12, 1, 4, 6, 6).astype(np.float32)),
        (lenet, rng.rand(12, 3, 6, 6).astype(np.float32)),
    ]:
        out = fit_and_run(backbone, X)
        assert np.isfinite(out).all() and len(out) == len(X)
        with pytest.raises(RuntimeError):  # what channels-last would have done
            fit_and_run(backbone, X, channels_last=True)
