"""The frozen-feature cache: frozen blocks run once per fit, results unchanged."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from sktransfer import FineTunedClassifier, PretrainedFeatureExtractor

from .conftest import count_bottom_batches, make_cnn, make_mlp


def _cnn_data(images):
    X, y = images
    return (X.transpose(0, 3, 1, 2) / 255).astype(np.float32), y


@pytest.mark.parametrize(
    "params",
    [
        {"unfreeze_depth": 1, "warmup_epochs": 2},
        {"unfreeze_depth": 0},
        {"unfreeze_depth": "all", "warmup_epochs": 0},
        {"unfreeze_depth": 2, "train_bn": True, "layer_decay": 0.5},
        {"unfreeze_depth": 2, "warmup": "epochs"},
    ],
)
def test_cache_on_and_off_give_the_same_model(images, params):
    X, y = _cnn_data(images)
    common = {"backbone": make_cnn(), "max_epochs": 4, "batch_size": 4, "random_state": 0}
    on = FineTunedClassifier(frozen_cache=True, **common, **params).fit(X, y)
    off = FineTunedClassifier(frozen_cache=False, **common, **params).fit(X, y)
    np.testing.assert_allclose(on.predict_proba(X), off.predict_proba(X), atol=1e-6)
    losses_on = [row["train_loss"] for row in on.history_]
    losses_off = [row["train_loss"] for row in off.history_]
    np.testing.assert_allclose(losses_on, losses_off, rtol=1e-5)
    assert [r["phase"] for r in on.history_] == [r["phase"] for r in off.history_]


def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_frozen_blocks_run_once_per_fit(images, monkeypatch):
    X, y = _cnn_data(images)
    counts = {}

    # Count forward calls of each block of the copy fit makes.
    from sktransfer.backbones import module as _module_family

    build = _module_family.build_body

    def counting_build(*args, **kwargs):
        body = build(*args, **kwargs)
        for i, block in enumerate(body.blocks):
            counts[i] = _count_calls(block)
        return body

    monkeypatch.setattr(_module_family, "build_body", counting_build)
    # 12 samples in batches of 4: 3 batches an epoch; 2 warm-up epochs, 3 more.
    # With the cache, one pass over the data (it also gives the linear probe
    # its features), then only the top block runs. Without it, the probe's
    # pass, then every block on every batch.
    for frozen_cache, bottom, top in [(True, 3, 3 + 3 * 3), (False, 3 + 5 * 3, 3 + 5 * 3)]:
        counts.clear()
        FineTunedClassifier(
            backbone=make_cnn(),
            unfreeze_depth=1,
            warmup_epochs=2,
            max_epochs=5,
            batch_size=4,
            frozen_cache=frozen_cache,
        ).fit(X, y)
        assert (len(counts[0]), len(counts[2])) == (bottom, top)


def test_cache_is_off_from_scratch_and_says_so(images, capsys):
    X, y = _cnn_data(images)
    FineTunedClassifier(backbone=make_cnn(), weights=None, max_epochs=1, verbose=1).fit(X, y)
    assert "frozen-feature cache off: weights=None trains every block" in capsys.readouterr().out
    FineTunedClassifier(backbone=make_cnn(), unfreeze_depth=1, max_epochs=2, verbose=1).fit(X, y)
    assert "frozen-feature cache: 12 samples cut before block 2 of 3" in capsys.readouterr().out


def test_grid_search_results_do_not_change_with_the_cache(images):
    X, y = _cnn_data(images)
    grid = [
        {"unfreeze_depth": [0, 1, 2], "backbone_lr": [1e-3, 1e-2]},
        {"weights": [None]},
    ]
    results = []
    for frozen_cache in (True, False):
        clf = FineTunedClassifier(
            backbone=make_cnn(),
            max_epochs=3,
            batch_size=4,
            lr=1e-2,
            random_state=0,
            frozen_cache=frozen_cache,
        )
        results.append(GridSearchCV(clf, grid, cv=2).fit(X, y))
    on, off = results
    assert on.best_params_ == off.best_params_
    np.testing.assert_allclose(
        on.cv_results_["mean_test_score"], off.cv_results_["mean_test_score"], atol=1e-6
    )


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_memory_shares_frozen_outputs_across_candidates_and_folds(images, tmp_path, n_jobs):
    import joblib

    X, y = _cnn_data(images)
    grid = {"unfreeze_depth": [0, 1, 2], "backbone_lr": [1e-3, 1e-2]}
    memory = joblib.Memory(tmp_path, verbose=0)
    results = []
    for mem in (None, memory):
        clf = FineTunedClassifier(
            backbone=make_cnn(), max_epochs=3, batch_size=4, random_state=0, memory=mem
        )
        results.append(GridSearchCV(clf, grid, cv=2, n_jobs=n_jobs).fit(X, y))
    plain, cached = results
    assert plain.best_params_ == cached.best_params_
    np.testing.assert_allclose(
        plain.cv_results_["mean_test_score"], cached.cv_results_["mean_test_score"], atol=1e-6
    )
    # Stored: the outputs of each (fold, cut), 2 * 3, not one per candidate, and
    # the refit's, at its cut and the cuts below it (its pass keeps them);
    # one linear probe per fold and one for the refit.
    stored = list(tmp_path.rglob("_frozen_outputs_by_key/*/output.pkl"))
    probes = list(tmp_path.rglob("_fit_probe_by_key/*/output.pkl"))
    refit_cut = 3 - cached.best_params_["unfreeze_depth"]
    assert (len(stored), len(probes)) == (2 * 3 + refit_cut, 3)


def _count_bottom_batches(monkeypatch):
    """Record every batch the bottom block of any fitted copy runs on."""
    from sktransfer.backbones import module as _module_family

    return count_bottom_batches(monkeypatch, _module_family)


@pytest.mark.parametrize("depths", [[2, 1, 0], [0, 1, 2], [1, 0, 2]])
def test_memory_runs_the_frozen_blocks_once_per_fold_in_any_order(
    images, tmp_path, monkeypatch, depths
):
    X, y = _cnn_data(images)
    grid = {"unfreeze_depth": depths}
    common = {"backbone": make_cnn(), "max_epochs": 3, "batch_size": 4, "random_state": 0}
    plain = GridSearchCV(FineTunedClassifier(**common), grid, cv=2).fit(X, y)
    calls = _count_bottom_batches(monkeypatch)
    cached = GridSearchCV(FineTunedClassifier(memory=str(tmp_path), **common), grid, cv=2)
    cached.fit(X, y)
    # The bottom block runs over each sample once: the first fold's training
    # part (2 batches) and validation part (2), each pass keeping the lower
    # cuts too; the second fold and the refit take their samples from those
    # passes (validation below the top keeps no pooled features: the blocks
    # above the cut run again for them, on the kept activations).
    assert len(calls) == 2 + 2
    assert plain.best_params_ == cached.best_params_
    for name in ("split0_test_score", "split1_test_score"):
        np.testing.assert_array_equal(plain.cv_results_[name], cached.cv_results_[name])
    # A model without memory computes every block of every prediction.
    np.testing.assert_allclose(plain.predict_proba(X), cached.predict_proba(X), atol=1e-6)


def _scores_by_candidate(search):
    results = search.cv_results_
    names = [f"split{i}_test_score" for i in range(search.n_splits_)]
    return {
        tuple(sorted(params.items())): [results[name][i] for name in names]
        for i, params in enumerate(results["params"])
    }


def test_ascending_and_descending_depths_give_the_same_search(images, tmp_path):
    X, y = _cnn_data(images)
    common = {"backbone": make_cnn(), "max_epochs": 3, "batch_size": 4, "random_state": 0}
    searches = [
        GridSearchCV(
            FineTunedClassifier(memory=str(tmp_path / str(order)), **common),
            {"unfreeze_depth": order, "backbone_lr": [1e-3, 1e-2]},
            cv=2,
        ).fit(X, y)
        for order in ([0, 1, 2], [2, 1, 0])
    ]
    up, down = searches
    # Every candidate scores the same on every fold (ties may pick another best).
    assert _scores_by_candidate(up) == _scores_by_candidate(down)
    assert up.best_score_ == down.best_score_


def test_a_pass_keeps_lower_cuts_as_their_own_passes_give_them(images, tmp_path, monkeypatch):
    import joblib

    from sktransfer import _cache
    from sktransfer._cache import FROZEN, frozen_outputs, weights_key

    X, y = _cnn_data(images)
    body = FineTunedClassifier(backbone=make_cnn())._load_backbone(X)
    options, source = (4, "cpu", "float32", False), weights_key(body)
    calls = _count_calls(body.blocks[0])
    memory = joblib.Memory(tmp_path / "all", verbose=0)
    pooled, activations = FROZEN.fit_outputs(memory, body, X, 3, source, options)
    assert activations is None and len(calls) == 3  # the last cut: pooled features only
    for cut in (2, 1):
        expected = frozen_outputs(body, X, cut, *options)
        del calls[:]
        got = FROZEN.fit_outputs(memory, body, X, cut, source, options)
        assert len(calls) == 0  # kept by the pass to cut 3
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    # Bounded: lower cuts that do not fit in LOWER_BYTES are not kept.
    monkeypatch.setattr(_cache, "LOWER_BYTES", 0)
    FROZEN.clear()  # nor kept in process from the passes above
    memory = joblib.Memory(tmp_path / "none", verbose=0)
    FROZEN.fit_outputs(memory, body, X, 3, source, options)
    del calls[:]
    FROZEN.fit_outputs(memory, body, X, 2, source, options)
    assert len(calls) == 3


def test_a_pass_with_memory_runs_only_the_samples_no_kept_pass_has(images, tmp_path):
    from sktransfer._cache import FROZEN, frozen_outputs, weights_key

    X, y = _cnn_data(images)
    body = FineTunedClassifier(backbone=make_cnn())._load_backbone(X)
    options, source = (4, "cpu", "float32", False), weights_key(body)
    calls = _count_calls(body.blocks[0])
    FROZEN.fit_outputs(str(tmp_path / "a"), body, X[:8], 2, source, options)
    assert len(calls) == 2
    # X[4:] shares 4 samples with X[:8]: only the other 4 run (one batch).
    got = FROZEN.fit_outputs(str(tmp_path / "b"), body, X[4:], 2, source, options)
    assert len(calls) == 3
    expected = frozen_outputs(body, X[4:], 2, *options)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # Samples are told apart by content, in any order: a changed one runs again.
    changed = X[[9, 0, 5, 2]].copy()
    changed[1] = 1 - changed[1]
    del calls[:]
    got = FROZEN.fit_outputs(str(tmp_path / "c"), body, changed, 2, source, options)
    assert len(calls) == 1
    expected = frozen_outputs(body, changed, 2, *options)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # Scored below the top, samples keep no pooled features: a fit's pass runs
    # the blocks above the cut on their kept activations, not the bottom block.
    FROZEN.clear()
    FROZEN.predict_outputs(body, X[:4], 2, source, options)
    top = _count_calls(body.blocks[2])
    del calls[:]
    got = FROZEN.fit_outputs(str(tmp_path / "e"), body, X[:4], 2, source, options)
    assert (len(calls), len(top)) == (0, 1)
    expected = frozen_outputs(body, X[:4], 2, *options)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # Other weights are another key: nothing is taken from the passes above.
    network = make_cnn()
    with torch.no_grad():
        network[0][0].weight.add_(0.5)
    other = FineTunedClassifier(backbone=network)._load_backbone(X)
    calls = _count_calls(other.blocks[0])
    FROZEN.fit_outputs(str(tmp_path / "d"), other, X[:4], 2, weights_key(other), options)
    assert len(calls) == 1


def test_lower_cuts_taken_from_several_passes_stay_within_the_budget(images, monkeypatch):
    from sktransfer import _cache
    from sktransfer._cache import FROZEN, weights_key

    X, y = _cnn_data(images)
    body = FineTunedClassifier(backbone=make_cnn())._load_backbone(X)
    options, source = (4, "cpu", "float32", False), weights_key(body)
    kept, _ = _cache._run_from_input(body, X, 3, options, (), True, (1, 2))
    # Each half keeps both lower cuts; together, cut 2 alone is over the budget.
    monkeypatch.setattr(_cache, "LOWER_BYTES", _cache.nbytes(kept[2]) - 1)
    for half in (X[:6], X[6:]):
        FROZEN.predict_outputs(body, half, 3, source, options)
    kept, pooled = FROZEN._from_input(body, X, 3, options, (), True, (1, 2), None, source)
    assert kept == {} and len(pooled) == 12


def test_blocks_working_in_place_leave_kept_outputs_as_they_are(vectors, tmp_path):
    X, y = vectors
    # Each child is a block: the activations kept at the cut enter an in-place
    # Hardswish, which changes what it is given (applied twice, it differs).
    backbone = torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.Hardswish(inplace=True), torch.nn.Linear(8, 4)
    )
    params = dict(backbone=backbone, unfreeze_depth=2, max_epochs=3, batch_size=16, random_state=0)
    off = FineTunedClassifier(**params, frozen_cache=False).fit(X, y)
    expected = off.predict_proba(X)
    on = FineTunedClassifier(**params).fit(X, y)
    np.testing.assert_allclose(on.predict_proba(X), expected, atol=1e-6)
    kept = FineTunedClassifier(**params, memory=str(tmp_path)).fit(X, y)
    for _ in range(2):  # predictions from the outputs kept in process
        np.testing.assert_allclose(kept.predict_proba(X), expected, atol=1e-6)
    again = FineTunedClassifier(**params, memory=str(tmp_path / "other")).fit(X, y)
    np.testing.assert_allclose(again.predict_proba(X), expected, atol=1e-6)


@pytest.mark.parametrize("unfreeze_depth", [0, 2])
def test_predict_with_memory_reuses_frozen_outputs_in_process(
    images, tmp_path, monkeypatch, unfreeze_depth
):
    from sktransfer._cache import FROZEN

    X, y = _cnn_data(images)
    clf = FineTunedClassifier(
        backbone=make_cnn(),
        unfreeze_depth=unfreeze_depth,
        max_epochs=2,
        batch_size=4,
        random_state=0,
        memory=str(tmp_path),
    ).fit(X, y)
    plain = clone(clf).set_params(memory=None).fit(X, y)
    expected = plain.predict_proba(X[:5])
    calls = []
    clf.net_.module_.body.blocks[0].register_forward_hook(lambda *args: calls.append(1))
    np.testing.assert_allclose(clf.predict_proba(X[:5]), expected, atol=1e-6)
    assert len(calls) == 0  # the fit's pass computed these samples' outputs
    FROZEN.clear()
    np.testing.assert_allclose(clf.predict_proba(X[:5]), expected, atol=1e-6)
    np.testing.assert_allclose(clf.predict_proba(X[:5]), expected, atol=1e-6)
    assert len(calls) == 2  # 5 samples in batches of 4, once
    assert len(FROZEN) == 1
    # Bounded: with no room, only the inputs predicted last are kept.
    monkeypatch.setattr(FROZEN, "max_bytes", 0)
    clf.predict(X[5:])
    clf.predict(X[:3])
    assert len(FROZEN) == 1
    np.testing.assert_allclose(clf.predict_proba(X[5:]), plain.predict_proba(X[5:]), atol=1e-6)


def test_pipeline_memory_hits_with_a_module_backbone(vectors, tmp_path):
    # clone deep-copies the backbone; the copy must hash as the original does.
    X, y = vectors
    extractor = PretrainedFeatureExtractor(backbone=make_mlp(n_in=6), random_state=0)
    pipe = Pipeline([("emb", extractor), ("clf", LogisticRegression())], memory=str(tmp_path))
    expected = pipe.fit(X, y).predict_proba(X)
    pipe.fit(X, y)
    clone(pipe).fit(X, y)
    assert len(list(tmp_path.rglob("_fit_transform_one*/*/output.pkl"))) == 1
    np.testing.assert_array_equal(pipe.predict_proba(X), expected)


def test_clear_cache_forgets_loaded_backbones_and_predicted_outputs(images, tmp_path):
    import torch
    from torchvision.models import get_model

    from sktransfer import backbones, clear_cache
    from sktransfer._cache import FROZEN

    X, y = images
    path = tmp_path / "resnet18.pth"
    torch.save(get_model("resnet18", weights=None).state_dict(), path)
    clf = FineTunedClassifier(
        backbone="resnet18", weights=str(path), input_size=20, max_epochs=2, memory=str(tmp_path)
    ).fit(X, y)
    clf.predict(X)
    assert len(FROZEN) == 1 and len(backbones.PRISTINE) == 1
    clear_cache()
    assert len(FROZEN) == 0 and len(backbones.PRISTINE) == 0


def test_disk_key_holds_the_library_versions(images, tmp_path, monkeypatch):
    from sktransfer import _cache

    X, y = _cnn_data(images)
    params = {"backbone": make_cnn(), "unfreeze_depth": 1, "max_epochs": 2, "memory": str(tmp_path)}
    FineTunedClassifier(**params).fit(X, y)
    FineTunedClassifier(**params).fit(X, y)
    # The pass to cut 2 stores it and the cut below.
    assert len(list(tmp_path.rglob("_frozen_outputs_by_key/*/output.pkl"))) == 2
    monkeypatch.setattr(_cache, "VERSIONS", ("another", "release"))
    FineTunedClassifier(**params).fit(X, y)
    assert len(list(tmp_path.rglob("_frozen_outputs_by_key/*/output.pkl"))) == 4


def test_weights_key_of_weights_as_loaded_names_architecture_and_preprocessing(images):
    import torch

    from sktransfer._cache import weights_key
    from sktransfer._modules import Body

    X, _ = images

    def body(**params):
        return FineTunedClassifier(backbone="efficientnet_lite0", **params)._load_backbone(X)

    first, again = body(input_size=32), body(input_size=32)  # the second, a copy
    assert first.architecture == again.architecture == repr(first)  # kept from the build
    assert weights_key(first) == weights_key(again)
    assert weights_key(body(input_size=48)) != weights_key(first)
    # The same source and preprocessing, another architecture: another key.
    small, large = Body([torch.nn.Linear(3, 4)]), Body([torch.nn.Linear(3, 5)])
    small.source = large.source = ("a backbone", ("weights.pt", 1, 2))
    assert weights_key(small) != weights_key(large)


def test_weights_key_hashes_bfloat16_weights_by_content():
    import copy

    import torch

    from sktransfer._cache import weights_key
    from sktransfer._modules import Body

    body = Body([torch.nn.Linear(3, 4).to(torch.bfloat16)])
    twin = copy.deepcopy(body)
    assert weights_key(body) == weights_key(twin)
    with torch.no_grad():
        twin.blocks[0].weight[0, 0] += 1
    assert weights_key(body) != weights_key(twin)


def _count_partial_fits(monkeypatch):
    from sktransfer._finetune import _TransferNet

    partial_fit, calls = _TransferNet.partial_fit, []

    def counting(net, X, y=None, **kwargs):
        calls.append(kwargs.get("epochs"))
        return partial_fit(net, X, y, **kwargs)

    monkeypatch.setattr(_TransferNet, "partial_fit", counting)
    return calls


@pytest.mark.parametrize("warmup", ["linear_probe", "epochs"])
@pytest.mark.parametrize(
    "after",
    [
        {"unfreeze_depth": 2, "backbone_lr": 1e-2},
        {"unfreeze_depth": 3, "layer_decay": 0.5, "train_bn": True},
        {"unfreeze_depth": 1, "strategy": "lora"},
    ],
)
def test_a_fit_reusing_a_stored_warm_up_equals_one_computing_it(
    vectors, tmp_path, monkeypatch, after, warmup
):
    import torch

    X, y = vectors
    common = {
        "backbone": make_mlp(n_in=6),
        "warmup_epochs": 2,
        "max_epochs": 4,
        "lr": 1e-2,
        "batch_size": 8,
        "random_state": 0,
        "warmup": warmup,
    }
    calls = _count_partial_fits(monkeypatch)
    shared = str(tmp_path / "shared")
    # Another candidate on the same fold stores the warm-up ...
    FineTunedClassifier(unfreeze_depth=1, memory=shared, **common).fit(X, y)
    assert calls == [2, 2]
    calls.clear()
    reused = FineTunedClassifier(memory=shared, **common, **after).fit(X, y)
    assert calls == [2]  # ... which this one continues: only the fine-tuning epochs run
    calls.clear()
    alone = FineTunedClassifier(memory=str(tmp_path / "alone"), **common, **after).fit(X, y)
    assert calls == [2, 2]
    state, expected = reused.net_.module_.state_dict(), alone.net_.module_.state_dict()
    assert state.keys() == expected.keys()
    for name in state:
        assert torch.equal(state[name], expected[name]), name
    assert [r["train_loss"] for r in reused.history_] == [r["train_loss"] for r in alone.history_]
    assert reused.n_trainable_params_ == alone.n_trainable_params_
    np.testing.assert_array_equal(reused.predict_proba(X), alone.predict_proba(X))


def test_a_stored_warm_up_gives_back_the_same_tensors():
    import pickle

    import torch

    from sktransfer._finetune import _Array, _arrays, _tensors

    state = {
        "weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "step": torch.tensor(3.0),
        "rng": torch.get_rng_state(),
        "half": torch.ones(2, dtype=torch.bfloat16),  # NumPy has no bfloat16
        "groups": [{"lr": 0.1, "params": [0, 1], "betas": (0.9, 0.99)}],
    }
    stored = _arrays(state)
    assert isinstance(stored["weight"], _Array) and isinstance(stored["rng"], _Array)
    assert isinstance(stored["half"], torch.Tensor) and stored["half"] is not state["half"]
    back = _tensors(pickle.loads(pickle.dumps(stored)))
    for name in ("weight", "step", "rng", "half"):
        assert back[name].dtype == state[name].dtype and back[name].shape == state[name].shape
        assert torch.equal(back[name], state[name]) and back[name] is not state[name]
    assert back["groups"] == state["groups"]


def test_memory_warms_up_once_per_fold_in_a_search(vectors, tmp_path, monkeypatch):
    X, y = vectors
    common = {"backbone": make_mlp(n_in=6), "warmup_epochs": 2, "max_epochs": 3, "lr": 1e-2}
    grid = {"unfreeze_depth": [0, 1, 2], "backbone_lr": [1e-3, 1e-2]}
    clf = FineTunedClassifier(batch_size=8, random_state=0, **common)
    plain = GridSearchCV(clf, grid, cv=2).fit(X, y)
    calls = _count_partial_fits(monkeypatch)
    cached = GridSearchCV(clone(clf).set_params(memory=str(tmp_path)), grid, cv=2).fit(X, y)
    # Warm-ups (2 epochs): one per fold and the refit's; every candidate fine-tunes.
    assert calls.count(2) == 2 + 1 and calls.count(1) == 6 * 2 + 1
    for name in ("split0_test_score", "split1_test_score"):
        np.testing.assert_array_equal(plain.cv_results_[name], cached.cv_results_[name])


@pytest.mark.parametrize(
    "change", [{"lr": 1e-3}, {"random_state": 1}, {"batch_size": 4}, {"warmup_epochs": 1}]
)
def test_a_warm_up_is_not_reused_where_it_would_differ(vectors, tmp_path, monkeypatch, change):
    X, y = vectors
    common = {"backbone": make_mlp(n_in=6), "max_epochs": 3, "lr": 1e-2, "memory": str(tmp_path)}
    params = {"warmup_epochs": 2, "batch_size": 8, "random_state": 0, **common}
    calls = _count_partial_fits(monkeypatch)
    FineTunedClassifier(unfreeze_depth=1, **params).fit(X, y)
    calls.clear()
    FineTunedClassifier(unfreeze_depth=2, **{**params, **change}).fit(X, y)
    assert len(calls) == 2  # its own warm-up, then the fine-tuning


def test_the_probe_and_warm_up_are_kept_by_their_features_key(vectors, tmp_path, monkeypatch):
    from sktransfer import _finetune

    X, y = vectors
    probes, fit_probe = [], _finetune.fit_probe
    monkeypatch.setattr(_finetune, "fit_probe", lambda *a: probes.append(1) or fit_probe(*a))
    calls = _count_partial_fits(monkeypatch)
    params = {"backbone": make_mlp(n_in=6), "warmup_epochs": 2, "max_epochs": 3, "lr": 1e-2}
    params.update(batch_size=8, random_state=0, memory=str(tmp_path))
    FineTunedClassifier(unfreeze_depth=1, **params).fit(X, y)
    assert len(probes) == 1 and calls == [2, 1]
    FineTunedClassifier(unfreeze_depth=2, **params).fit(X, y)  # another candidate
    assert len(probes) == 1 and calls == [2, 1, 1]
    changed = X.copy()
    changed[0, 0] += 1e-3  # other data: other features, another probe and warm-up
    FineTunedClassifier(unfreeze_depth=2, **params).fit(changed, y)
    assert len(probes) == 2 and calls == [2, 1, 1, 2, 1]
    other = make_mlp(n_in=6)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)  # other weights: the same
    FineTunedClassifier(unfreeze_depth=2, **{**params, "backbone": other}).fit(X, y)
    assert len(probes) == 3 and calls == [2, 1, 1, 2, 1, 2, 1]


def test_successive_halving_over_epochs_shares_the_warm_up(vectors, tmp_path, monkeypatch):
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV

    X, y = vectors
    clf = FineTunedClassifier(
        backbone=make_mlp(n_in=6), warmup_epochs=2, lr=1e-2, batch_size=8, random_state=0
    )
    grid = {"unfreeze_depth": [0, 1, 2], "backbone_lr": [1e-3, 1e-2]}
    options = {"resource": "max_epochs", "max_resources": 6, "factor": 3, "cv": 2}
    # A first round shorter than the warm-up fails each fit: the message says what to set.
    search = HalvingGridSearchCV(clf, grid, min_resources=1, error_score="raise", **options)
    with pytest.raises(ValueError, match=r"min_resources >= warmup_epochs"):
        search.fit(X, y)
    with pytest.warns(UserWarning, match="no epoch is left after the warm-up"):
        plain = HalvingGridSearchCV(clf, grid, min_resources=2, **options).fit(X, y)
    calls = _count_partial_fits(monkeypatch)
    with pytest.warns(UserWarning, match="no epoch is left after the warm-up"):
        cached = HalvingGridSearchCV(
            clone(clf).set_params(memory=str(tmp_path)), grid, min_resources=2, **options
        ).fit(X, y)
    # Rounds of 2 and 6 epochs: one warm-up per fold and the refit's, all rounds together.
    assert list(cached.n_resources_) == [2, 6] and calls.count(2) == 2 + 1
    assert cached.best_params_ == plain.best_params_
    np.testing.assert_array_equal(
        plain.cv_results_["mean_test_score"], cached.cv_results_["mean_test_score"]
    )
