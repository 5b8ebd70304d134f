"""The transfer recipe really happens: what is frozen, when, and at which rate."""

import numpy as np
import pytest
import torch
from torch import nn

from sktransfer import FineTunedClassifier

from .conftest import make_cnn, make_mlp


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, after, prefix):
    keys = [k for k in before if k.startswith(prefix)]
    assert keys, prefix
    return any(not torch.equal(before[k], after[k]) for k in keys)


def _block_states(clf):
    return [_state(block) for block in clf.net_.module_.body.blocks]


def _fit_cnn(images, **params):
    X, y = images
    X = X.transpose(0, 3, 1, 2).astype(np.float32) / 255
    backbone = make_cnn()
    params = {"lr": 1e-2, "backbone_lr": 1e-2, "batch_size": 4, "random_state": 0, **params}
    return backbone, FineTunedClassifier(backbone=backbone, **params).fit(X, y)


def test_warmup_leaves_backbone_bit_identical(images):
    with pytest.warns(UserWarning, match="no epoch is left after the warm-up"):
        backbone, clf = _fit_cnn(images, warmup_epochs=3, max_epochs=3, unfreeze_depth=2)
    start = _state(backbone)
    for i, block in enumerate(clf.net_.module_.body.blocks):
        for key, value in block.state_dict().items():
            assert torch.equal(value, start[f"{i}.{key}"]), (i, key)
    assert {row["phase"] for row in clf.history_} == {"warmup"}


def test_finetune_changes_blocks_above_the_cut_only(images):
    backbone, clf = _fit_cnn(images, warmup_epochs=1, max_epochs=3, unfreeze_depth=2)
    start = _state(backbone)
    blocks = clf.net_.module_.body.blocks
    after = {f"{i}.{k}": v for i, b in enumerate(blocks) for k, v in b.state_dict().items()}
    assert not _changed(start, after, "0.")
    assert _changed(start, after, "1.0.weight")
    assert _changed(start, after, "2.0.weight")
    # train_bn=False: BatchNorm statistics and affine parameters never move.
    for i in range(3):
        for name in ("running_mean", "running_var", "weight", "bias", "num_batches_tracked"):
            assert torch.equal(after[f"{i}.1.{name}"], start[f"{i}.1.{name}"]), (i, name)
    assert [row["phase"] for row in clf.history_] == ["warmup", "finetune", "finetune"]


def test_train_bn_true_lets_batchnorm_of_unfrozen_blocks_train(images):
    backbone, clf = _fit_cnn(images, warmup_epochs=1, max_epochs=2, unfreeze_depth=1, train_bn=True)
    start = _state(backbone)
    blocks = clf.net_.module_.body.blocks
    assert not torch.equal(blocks[2][1].running_mean, start["2.1.running_mean"])
    assert not torch.equal(blocks[2][1].weight, start["2.1.weight"])
    assert torch.equal(blocks[1][1].running_mean, start["1.1.running_mean"])


def test_optimizer_groups_carry_documented_learning_rates(vectors):
    X, y = vectors
    clf = FineTunedClassifier(
        backbone=make_mlp(),
        unfreeze_depth=2,
        lr=1e-2,
        backbone_lr=1e-3,
        layer_decay=0.5,
        max_epochs=2,
        random_state=0,
    ).fit(X, y)
    groups = clf.net_.optimizer_.param_groups
    head = clf.net_.module_.head
    assert groups[0]["lr"] == 1e-2
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in head.parameters()}
    assert [(g["name"], g["lr"]) for g in groups[1:]] == [("blocks.2", 1e-3), ("blocks.1", 5e-4)]
    blocks = clf.net_.module_.body.blocks
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in blocks[2].parameters()}
    # Frozen parameters are never handed to the optimizer.
    in_optimizer = {id(p) for g in groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for p in blocks[0].parameters())
    n_head = sum(p.numel() for p in head.parameters())
    n_top = sum(p.numel() for b in blocks[1:] for p in b.parameters())
    assert clf.n_trainable_params_ == {"warmup": n_head, "finetune": n_head + n_top}


def test_unfrozen_blocks_start_with_fresh_optimizer_state(vectors):
    X, y = vectors
    clf = FineTunedClassifier(
        backbone=make_mlp(), unfreeze_depth=1, warmup_epochs=2, max_epochs=3, random_state=0
    ).fit(X, y)
    optimizer = clf.net_.optimizer_
    head_step = optimizer.state[clf.net_.module_.head.weight]["step"]
    top_step = optimizer.state[clf.net_.module_.body.blocks[2][0].weight]["step"]
    n_batches = int(np.ceil(len(X) / 32))
    assert int(head_step) == 3 * n_batches
    assert int(top_step) == 1 * n_batches


def test_scratch_trains_everything_at_lr_from_new_weights(images):
    backbone, clf = _fit_cnn(images, weights=None, lr=1e-2, max_epochs=2)
    assert clf.unfreeze_depth_ == clf.n_blocks_ == 3
    assert [row["phase"] for row in clf.history_] == ["scratch", "scratch"]
    groups = clf.net_.optimizer_.param_groups
    assert {g["lr"] for g in groups} == {1e-2}
    total = sum(p.numel() for p in clf.net_.module_.parameters())
    assert clf.n_trainable_params_ == {"scratch": total}
    # BatchNorm trains from scratch.
    assert not torch.equal(clf.net_.module_.body.blocks[0][1].running_var, torch.ones(4))


def test_scratch_starts_from_other_weights_than_default(vectors):
    X, y = vectors
    backbone = make_mlp(n_in=6)
    start = _state(backbone)
    common = {"backbone": backbone, "unfreeze_depth": 0, "max_epochs": 1, "random_state": 0}
    pretrained = FineTunedClassifier(**common).fit(X, y)
    for i, block in enumerate(pretrained.net_.module_.body.blocks):
        assert torch.equal(block[0].weight, start[f"{i}.0.weight"])
    # One scratch epoch at a tiny lr barely moves the weights: they differ
    # from the pretrained ones because they were re-initialised.
    scratch = FineTunedClassifier(**{**common, "weights": None, "lr": 1e-8}).fit(X, y)
    for i, block in enumerate(scratch.net_.module_.body.blocks):
        assert (block[0].weight - start[f"{i}.0.weight"]).abs().max() > 1e-3


def test_users_module_is_untouched(images, vectors):
    X, y = vectors
    backbone = make_mlp()  # lazy first layer
    FineTunedClassifier(backbone=backbone, unfreeze_depth="all", max_epochs=2).fit(X, y)
    assert isinstance(backbone[0][0], nn.LazyLinear)
    assert backbone[0][0].has_uninitialized_params()
    cnn, _ = _fit_cnn(images, weights=None, max_epochs=1)
    cnn_state = _state(cnn)
    assert all(torch.equal(cnn_state[k], v) for k, v in _state(make_cnn()).items())


def test_unfreeze_depth_all_resolves_without_rewriting_the_parameter(vectors):
    X, y = vectors
    clf = FineTunedClassifier(backbone=make_mlp(), unfreeze_depth="all", max_epochs=2)
    clf.fit(X, y)
    assert clf.unfreeze_depth == "all"
    assert clf.unfreeze_depth_ == clf.n_blocks_ == 3
    assert clf.n_trainable_params_["finetune"] == sum(
        p.numel() for p in clf.net_.module_.parameters()
    )


def test_feature_size_pass_runs_in_eval_mode(images):
    """The pass that sizes the output must not move BatchNorm statistics."""
    X, y = images
    X = X.transpose(0, 3, 1, 2).astype(np.float32) / 255
    backbone = make_cnn()
    start = _state(backbone)
    clf = FineTunedClassifier(backbone=backbone, unfreeze_depth=0, max_epochs=1).fit(X, y)
    for i, block in enumerate(clf.net_.module_.body.blocks):
        assert torch.equal(block[1].running_mean, start[f"{i}.1.running_mean"])


@pytest.mark.parametrize("device", ["cpu"])
def test_same_random_state_same_predictions(vectors, device):
    X, y = vectors
    params = {"backbone": make_mlp(), "unfreeze_depth": 2, "max_epochs": 3, "device": device}
    p1 = FineTunedClassifier(random_state=3, **params).fit(X, y).predict_proba(X)
    p2 = FineTunedClassifier(random_state=3, **params).fit(X, y).predict_proba(X)
    p3 = FineTunedClassifier(random_state=4, **params).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(p1, p2)
    assert not np.array_equal(p1, p3)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_linear_probe_warmup_starts_the_head_from_logistic_regression(n_classes):
    from sklearn.linear_model import LogisticRegression

    from sktransfer import PretrainedFeatureExtractor

    rng = np.random.RandomState(0)
    X = rng.normal(size=(60, 6)).astype(np.float32)
    y = np.digitize(X[:, 0], np.quantile(X[:, 0], np.linspace(0, 1, n_classes + 1)[1:-1]))
    backbone = make_mlp(n_in=6)
    features = PretrainedFeatureExtractor(backbone=backbone).fit_transform(X)
    probe = LogisticRegression(max_iter=1000).fit(features, y)
    clf = FineTunedClassifier(
        backbone=backbone,
        warmup="linear_probe",
        warmup_epochs=0,
        max_epochs=1,
        lr=1e-12,
        backbone_lr=1e-12,
        random_state=0,
    ).fit(X, y)
    # With negligible learning rates, the model is the probe.
    np.testing.assert_allclose(clf.predict_proba(X), probe.predict_proba(features), atol=1e-4)
    assert clf.history_[0]["phase"] == "finetune"


class _RecordsTrain(nn.Module):
    """A block that does work in ``train()``, as some timm blocks clear caches there."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.modes = []

    def train(self, mode=True):
        self.modes.append(mode)
        return super().train(mode)

    def forward(self, x):
        return torch.relu(self.linear(x))


def test_blocks_overriding_train_are_called(vectors):
    X, y = vectors
    backbone = nn.Sequential(_RecordsTrain(6, 8), _RecordsTrain(8, 8))
    clf = FineTunedClassifier(backbone=backbone, unfreeze_depth=1, max_epochs=2, frozen_cache=False)
    clf.fit(X, y)
    frozen, top = clf.net_.module_.body.blocks
    assert True in top.modes  # each call reached the block's own train()
    n_calls = len(top.modes)
    clf.net_.module_.train()  # already in train mode: the blocks are called all the same
    assert len(top.modes) == n_calls + 1
    assert top.training and top.modes[-1] is True
    assert not frozen.training and frozen.modes[-1] is False  # kept in eval


@pytest.mark.parametrize("old_plan", [False, True])
def test_train_puts_back_modes_changed_from_outside(images, old_plan):
    X, y = images
    X = (X.transpose(0, 3, 1, 2) / 255).astype(np.float32)
    clf = FineTunedClassifier(backbone=make_cnn(), unfreeze_depth=1, max_epochs=2).fit(X, y)
    module = clf.net_.module_
    if old_plan:  # as models pickled by earlier versions hold it: walk the tree
        module._mode_plan = [(m, True) for m in module.modules() if m is not module]

    def modes():
        return [m.training for m in module.modules()]

    module.train()
    expected = modes()
    kept_bn = module.body.blocks[0][1]
    assert not kept_bn.training and module.body.blocks[2][0].training
    for change in (lambda: kept_bn.train(), lambda: module.body.train(), lambda: module.eval()):
        change()
        assert modes() != expected
        module.train()
        assert modes() == expected
    module.eval()
    assert not any(modes())


@pytest.mark.parametrize(
    "dtypes", [(np.float32, np.int64), (np.float64, np.int32), (np.uint8, np.int64)]
)
def test_array_batches_are_those_of_torchs_default_collation(vectors, dtypes):
    import skorch
    from torch.utils.data import DataLoader

    X, y = vectors
    X, y = (X * 10).astype(dtypes[0]), y.astype(dtypes[1])
    clf = FineTunedClassifier(backbone=make_mlp(n_in=6), max_epochs=2, batch_size=8).fit(X, y)
    net, dataset = clf.net_, skorch.dataset.Dataset(X, y)
    net.iterator_train__generator = torch.Generator().manual_seed(0)
    loader = net.get_iterator(dataset, training=True)
    assert type(loader.dataset).__name__ == "_ArrayDataset"  # one indexing a batch
    default = DataLoader(
        dataset, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    pairs = list(zip(loader, default, strict=True))
    assert len(pairs) == -(-len(y) // 8)
    for (xb, yb), (xd, yd) in pairs:
        assert xb.dtype == xd.dtype and yb.dtype == yd.dtype
        assert torch.equal(xb, xd) and torch.equal(yb, yd)


def test_the_probe_runs_blas_on_one_thread_and_puts_its_threads_back(vectors, monkeypatch):
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return {i["filepath"]: i["num_threads"] for i in threadpool_info()}

    X, y = vectors
    seen, fit = [], LogisticRegression.fit
    monkeypatch.setattr(
        LogisticRegression, "fit", lambda self, *a: seen.append(blas_threads()) or fit(self, *a)
    )
    blas = [i["filepath"] for i in threadpool_info() if i["user_api"] == "blas"]
    if not blas:
        pytest.skip("threadpoolctl finds no BLAS library it can limit here")
    with threadpool_limits(2, user_api="blas"):
        before = blas_threads()
        FineTunedClassifier(backbone=make_mlp(n_in=6), max_epochs=2).fit(X, y)
        assert blas_threads() == before  # as the caller set them
    assert len(seen) == 1 and all(seen[0][path] == 1 for path in blas)
    assert all(before[path] == 2 for path in blas)
