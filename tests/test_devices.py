"""A model fitted on a GPU loads and predicts on a machine without CUDA.

There is no GPU where these tests run: a GPU fit is simulated as it would be
pickled. The device parameters say ``"cuda"``, and the tensors a CUDA fit
leaves on the GPU (the fitted network, a module backbone on the GPU) carry
torch's ``"cuda:0"`` location tag, written through torch's public
``torch.serialization.register_package``. Loading such tensors without
mapping them fails on this machine, as it does for a real CUDA pickle.
"""

import io
import pickle
import warnings
from contextlib import contextmanager

import joblib
import numpy as np
import pytest
import torch
from torchvision.models import get_model

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor, load, save

from .conftest import make_mlp

without_cuda = pytest.mark.skipif(
    torch.cuda.is_available(), reason="simulates a machine without CUDA"
)
with_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# Storages (by data pointer) that pickle as if they lived on the GPU.
_ON_GPU = set()


def _tag_as_cuda(storage):
    return "cuda:0" if storage.data_ptr() in _ON_GPU else None


def _no_deserializer(storage, location):
    return None  # torch's own CUDA deserializer decides


torch.serialization.register_package(1, _tag_as_cuda, _no_deserializer)


@contextmanager
def tensors_tagged_cuda(*modules):
    """Inside, the parameters and buffers of ``modules`` pickle with the location
    tag of the first GPU, as those of modules on it do."""
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    _ON_GPU.update(t.untyped_storage().data_ptr() for t in tensors)
    try:
        yield
    finally:
        _ON_GPU.clear()


@without_cuda
def test_the_simulated_gpu_pickle_needs_mapping_to_load():
    module = torch.nn.Linear(3, 2)
    with tensors_tagged_cuda(module):
        blob = pickle.dumps(module)
    assert b"cuda:0" in blob
    with pytest.raises(RuntimeError, match="CUDA"):
        pickle.loads(blob)
    buffer = io.BytesIO()
    with tensors_tagged_cuda(module):
        torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, map_location="cpu")
    assert torch.equal(loaded["weight"], module.weight)


def _named_backbone(tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "mobilenet.pth"
    torch.save(get_model("mobilenet_v3_small", weights=None).state_dict(), checkpoint)
    return {"backbone": "mobilenet_v3_small", "weights": str(checkpoint), "input_size": 32}


def _fit_as_on_gpu(kind, vectors, images, tmp_path):
    """A fitted estimator left as a CUDA fit leaves it, the modules a CUDA fit
    puts on the GPU, its input and its output."""
    X, y = vectors
    if kind == "classifier, module":
        clf = FineTunedClassifier(backbone=make_mlp(n_in=6), unfreeze_depth=2, max_epochs=2)
    elif kind == "classifier, module, memory":
        clf = FineTunedClassifier(
            backbone=make_mlp(n_in=6), unfreeze_depth=1, max_epochs=2, memory=str(tmp_path)
        )
    elif kind == "classifier, named":
        X, y = images
        clf = FineTunedClassifier(**_named_backbone(tmp_path), max_epochs=2, batch_size=4)
    elif kind == "extractor, module":
        clf = PretrainedFeatureExtractor(backbone=make_mlp(n_in=6))
    else:
        X, y = images
        clf = PretrainedFeatureExtractor(**_named_backbone(tmp_path))
    clf.set_params(random_state=0).fit(X, y)
    expected = _output(clf, X)
    # What a fit with device="cuda" leaves: the parameters, skorch's device,
    # the fitted modules on the GPU (and the user's module there too).
    clf.set_params(device="cuda")
    if isinstance(clf, FineTunedClassifier):
        clf.net_.set_params(device="cuda")
        fitted = clf.net_.module_
    else:
        fitted = clf.backbone_
    on_gpu = [fitted] + ([clf.backbone] if isinstance(clf.backbone, torch.nn.Module) else [])
    return clf, on_gpu, X, expected


def _output(estimator, X):
    if isinstance(estimator, FineTunedClassifier):
        return estimator.predict_proba(X)
    return estimator.transform(X)


KINDS = [
    "classifier, module",
    "classifier, module, memory",
    "classifier, named",
    "extractor, module",
    "extractor, named",
]


@without_cuda
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dump", ["pickle", "joblib"])
def test_gpu_fitted_model_loads_and_predicts_on_cpu(kind, dump, vectors, images, tmp_path):
    clf, on_gpu, X, expected = _fit_as_on_gpu(kind, vectors, images, tmp_path)
    buffer = io.BytesIO()
    with tensors_tagged_cuda(*on_gpu):
        pickle.dump(clf, buffer) if dump == "pickle" else joblib.dump(clf, buffer)
    # Modules pickle with their tensors' device tag; a model with a named
    # backbone pickles as plain values, its description naming the device.
    blob = buffer.getvalue()
    assert b"cuda:0" in blob if "module" in kind else b'"device": "cuda"' in blob
    buffer.seek(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = pickle.load(buffer) if dump == "pickle" else joblib.load(buffer)
    # One warning, the estimator's, which says what happened and what to do.
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert messages[0].startswith(
        f"{type(clf).__name__} was fitted with device='cuda', but CUDA is not available on "
        f"this machine: its weights are loaded on the CPU and it predicts there"
    )
    assert "set_params(device=...)" in messages[0]
    assert loaded.device == "cpu"
    fitted = loaded.net_.module_ if isinstance(loaded, FineTunedClassifier) else loaded.backbone_
    assert {t.device.type for t in (*fitted.parameters(), *fitted.buffers())} == {"cpu"}
    if isinstance(loaded.backbone, torch.nn.Module):
        assert {p.device.type for p in loaded.backbone.parameters()} == {"cpu"}
    np.testing.assert_allclose(_output(loaded, X), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["classifier, module, memory", "extractor, module"])
def test_set_params_device_moves_a_fitted_model_without_refit(kind, vectors, images, tmp_path):
    clf, _, X, expected = _fit_as_on_gpu(kind, vectors, images, tmp_path)
    clf.set_params(device="cpu")  # as after loading on a CPU
    clf.fit = None  # no refit
    np.testing.assert_allclose(_output(clf, X), expected, rtol=1e-6, atol=1e-7)
    clf.set_params(device="cpu:0")
    np.testing.assert_allclose(_output(clf, X), expected, rtol=1e-6, atol=1e-7)
    if isinstance(clf, FineTunedClassifier):
        assert clf.net_.device == "cpu:0"  # the skorch net predicts where the estimator says


@without_cuda
@pytest.mark.parametrize("kind", ["classifier, module", "extractor, module"])
def test_cuda_without_cuda_is_a_clear_error(kind, vectors, images, tmp_path):
    clf, _, X, _ = _fit_as_on_gpu(kind, vectors, images, tmp_path)
    message = (
        r"device='cuda', but CUDA is not available on this machine "
        r"\(torch.cuda.is_available\(\) is False\); use device='cpu'"
    )
    with pytest.raises(ValueError, match=message):
        _output(clf, X)
    with pytest.raises(ValueError, match=message):
        clf.fit(*vectors)


@without_cuda
def test_unfitted_estimator_keeps_its_device_through_pickle():
    estimator = FineTunedClassifier(backbone=make_mlp(n_in=6), device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = pickle.loads(pickle.dumps(estimator))
    assert loaded.device == "cuda"  # fit says CUDA is missing, not a silent CPU fit


@with_cuda
@pytest.mark.parametrize("kind", ["classifier, module", "extractor, module"])
def test_cpu_fitted_model_moves_to_the_gpu(kind, vectors, images, tmp_path):
    clf, _, X, expected = _fit_as_on_gpu(kind, vectors, images, tmp_path)
    clf.set_params(device="cpu")
    expected = _output(clf, X)
    clf.set_params(device="cuda")
    np.testing.assert_allclose(_output(clf, X), expected, rtol=1e-4, atol=1e-5)
    fitted = clf.net_.module_ if isinstance(clf, FineTunedClassifier) else clf.backbone_
    assert {p.device.type for p in fitted.parameters()} == {"cuda"}


@without_cuda
@pytest.mark.parametrize("kind", ["classifier, named", "extractor, named"])
def test_gpu_fitted_model_saved_by_sktransfer_loads_on_cpu(kind, vectors, images, tmp_path):
    clf, _, X, expected = _fit_as_on_gpu(kind, vectors, images, tmp_path)
    save(clf, tmp_path / "model")
    with pytest.warns(UserWarning, match="fitted with device='cuda', but CUDA is not available"):
        loaded = load(tmp_path / "model")
    assert loaded.device == "cpu"
    np.testing.assert_allclose(_output(loaded, X), expected, rtol=1e-6, atol=1e-7)


def test_moving_a_module_to_the_device_it_is_on_changes_nothing(vectors, monkeypatch):
    from sktransfer._modules import TransferModule

    X, y = vectors
    clf = FineTunedClassifier(backbone=make_mlp(n_in=6), max_epochs=2).fit(X, y)
    module = clf.net_.module_
    assert isinstance(module, TransferModule)
    walks, apply = [], torch.nn.Module._apply

    def counting(self, *args, **kwargs):
        walks.append(type(self).__name__)
        return apply(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "_apply", counting)
    tensors = [*module.parameters(), *module.buffers()]
    for device in ("cpu", torch.device("cpu")):
        assert module.to(device) is module and module.body.to(device) is module.body
        moved = [*module.parameters(), *module.buffers()]
        assert len(moved) == len(tensors) and all(a is b for a, b in zip(moved, tensors))
    assert walks == []  # no submodule visited
    module.to(torch.float64)  # anything else is nn.Module.to's
    assert walks and all(p.dtype == torch.float64 for p in module.parameters())
    module.body.to("meta")
    assert all(p.device.type == "meta" for p in module.body.parameters())
    assert module.head.weight.device.type == "cpu"
