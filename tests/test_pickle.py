"""Fitted models pickle into a service and load there without network or refit."""

import io
import pickle
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from torch import nn
from torchvision.models import get_model

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor

LOADER = textwrap.dedent(
    """
    import pickle, socket, sys
    import joblib, numpy as np

    def no_network(*args, **kwargs):
        raise OSError("network access attempted")

    socket.socket = no_network
    socket.create_connection = no_network
    import sktransfer

    def no_refit(self, *args, **kwargs):
        raise AssertionError("fit called while loading")

    sktransfer.FineTunedClassifier.fit = no_refit
    sktransfer.PretrainedFeatureExtractor.fit = no_refit
    X = np.load(sys.argv[3])
    with open(sys.argv[1], "rb") as f:
        from_pickle = pickle.load(f)
    from_joblib = joblib.load(sys.argv[2])
    assert from_pickle.net_.optimizer_ is None
    np.save(sys.argv[4], from_pickle.predict_proba(X))
    np.save(sys.argv[5], from_joblib.predict_proba(X))
    """
)


def test_pickled_model_predicts_identically_in_a_fresh_process(tmp_path, images):
    X, y = images
    torch.manual_seed(0)
    checkpoint = tmp_path / "mobilenet.pth"
    torch.save(get_model("mobilenet_v3_small", weights=None).state_dict(), checkpoint)
    clf = FineTunedClassifier(
        backbone="mobilenet_v3_small",
        weights=str(checkpoint),
        input_size=32,
        max_epochs=2,
        batch_size=4,
        random_state=0,
    ).fit(X, y)
    checkpoint.unlink()  # the service does not have the weights file
    expected = clf.predict_proba(X)
    with open(tmp_path / "model.pkl", "wb") as f:
        pickle.dump(clf, f)
    joblib.dump(clf, tmp_path / "model.joblib")
    np.save(tmp_path / "X.npy", X)
    paths = [tmp_path / name for name in ("model.pkl", "model.joblib", "X.npy", "a.npy", "b.npy")]
    subprocess.run([sys.executable, "-c", LOADER, *map(str, paths)], check=True)
    np.testing.assert_array_equal(np.load(paths[3]), expected)
    np.testing.assert_array_equal(np.load(paths[4]), expected)


def test_pickle_holds_weights_and_metadata_only(vectors):
    X, y = vectors
    X = np.repeat(X, 50, axis=0)
    y = np.repeat(y, 50)
    from .conftest import make_mlp

    clf = FineTunedClassifier(
        backbone=make_mlp(n_in=6, widths=(256, 256)), unfreeze_depth=2, max_epochs=2
    ).fit(X, y)
    assert clf.net_.optimizer_ is not None  # used during training ...
    blob = pickle.dumps(clf)
    loaded = pickle.loads(blob)
    assert loaded.net_.optimizer_ is None  # ... but not pickled
    assert clf.net_.optimizer_ is not None
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    n_weight_bytes = 4 * sum(p.numel() for p in clf.net_.module_.parameters())
    # The fitted weights appear twice at most (user's backbone parameter and
    # fitted net); no Adam moments (2x trainable weights), no training data.
    assert len(blob) < 2 * n_weight_bytes + 60_000
    assert X[:8].tobytes() not in blob


def test_extractor_pickles(vectors):
    X, _ = vectors
    from .conftest import make_mlp

    ext = PretrainedFeatureExtractor(backbone=make_mlp(), random_state=0).fit(X)
    buffer = io.BytesIO()
    joblib.dump(ext, buffer)
    buffer.seek(0)
    np.testing.assert_array_equal(joblib.load(buffer).transform(X), ext.transform(X))


def test_module_backbone_hashes_by_content():
    from .conftest import make_mlp

    for estimator in (
        FineTunedClassifier(backbone=make_mlp(n_in=6)),
        PretrainedFeatureExtractor(backbone=make_mlp(n_in=6)),
    ):
        copy = clone(estimator)
        assert joblib.hash(copy) == joblib.hash(estimator)
        with torch.no_grad():
            copy.backbone[0][0].weight[0, 0] += 1
        assert joblib.hash(copy) != joblib.hash(estimator)


def test_unfitted_module_backbone_round_trips_through_pickle():
    torch.manual_seed(0)
    first, second = nn.Linear(4, 4), nn.Linear(4, 4)
    second.weight = first.weight  # tied
    first.bias.requires_grad_(False)
    backbone = nn.Sequential(first, nn.ReLU(), second, nn.LazyLinear(3))
    backbone.register_buffer("scale", torch.arange(3, dtype=torch.bfloat16))
    estimator = PretrainedFeatureExtractor(backbone=backbone)
    loaded = pickle.loads(pickle.dumps(estimator)).backbone
    assert loaded[0].weight is loaded[2].weight
    assert type(loaded[0].bias) is nn.Parameter and not loaded[0].bias.requires_grad
    assert isinstance(loaded[3].weight, nn.parameter.UninitializedParameter)
    for name in ("weight", "bias"):
        assert torch.equal(getattr(loaded[0], name), getattr(first, name))
    assert torch.equal(loaded.scale, backbone.scale) and loaded.scale.dtype == torch.bfloat16
    assert joblib.hash(PretrainedFeatureExtractor(backbone=loaded)) == joblib.hash(estimator)
    assert loaded(torch.zeros(2, 4)).shape == (2, 3)  # its lazy layer sizes itself
    assert isinstance(backbone[3].weight, nn.parameter.UninitializedParameter)


def _nbytes(module):
    tensors = (*module.parameters(), *module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors), len(tensors)


@pytest.mark.parametrize(
    "kind", ["classifier, module", "classifier, named", "extractor, module", "extractor, named"]
)
def test_pickled_size_is_the_weights_and_small_metadata(kind, tmp_path, images):
    """A pickle holds the fitted network once (and a module backbone, the
    parameter), with a few hundred bytes a tensor: no training data, no frozen
    cache, no optimizer state, no second copy of the pretrained weights."""
    from .conftest import make_mlp

    rng = np.random.RandomState(0)
    if "module" in kind:  # 3000 x 256 float32 activations at the cut: 3 MiB
        X = rng.normal(size=(3000, 6)).astype(np.float32)
        y = (X[:, 0] > 0).astype(int)
        params = {"backbone": make_mlp(n_in=6, widths=(256, 256))}
    else:
        X, y = images
        torch.manual_seed(0)
        checkpoint = tmp_path / "mobilenet.pth"
        torch.save(get_model("mobilenet_v3_small", weights=None).state_dict(), checkpoint)
        params = {"backbone": "mobilenet_v3_small", "weights": str(checkpoint), "input_size": 32}
    if kind.startswith("classifier"):
        estimator = FineTunedClassifier(
            **params, unfreeze_depth=1, max_epochs=2, memory=str(tmp_path / "cache")
        )
        estimator.fit(X, y).predict(X)  # frozen outputs kept on disk and in process
        fitted = estimator.net_.module_
    else:
        estimator = PretrainedFeatureExtractor(**params).fit(X)
        estimator.transform(X)
        fitted = estimator.backbone_
    n_bytes, n_tensors = _nbytes(fitted)
    if "module" in kind:  # the user's module, a parameter, pickles too
        more_bytes, more_tensors = _nbytes(estimator.backbone)
        n_bytes, n_tensors = n_bytes + more_bytes, n_tensors + more_tensors
    blob = pickle.dumps(estimator)
    assert n_bytes < len(blob) < n_bytes + 1024 * n_tensors + 64 * 1024
    assert X[:16].tobytes() not in blob
