"""The flat walks of ``_freeze`` give what ``nn.Module``'s walks give."""

import copy

import pytest
import torch
from torch import nn

from sktransfer._freeze import parameters_of, set_modes, submodules, tensors_of
from sktransfer._modules import Body, TransferModule
from sktransfer._strategy import Frozen, UnfreezeTop


def _tangled():
    """Shared submodules, a tied parameter, empty slots and a non-persistent buffer."""
    shared = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    first, second = nn.Linear(4, 4), nn.Linear(4, 4)
    second.weight = first.weight
    model = nn.Sequential(
        nn.Sequential(first, shared, nn.Dropout()),
        nn.ModuleDict({"a": shared, "b": nn.Sequential(second, nn.ReLU())}),
        nn.ModuleList([shared[1], nn.Identity()]),
    )
    model[0].register_module("empty", None)
    model[0].register_parameter("unset", None)
    model[1].register_buffer("scale", torch.ones(3), persistent=False)
    model[1].register_buffer("unset", None)
    return model


def test_walks_give_what_torch_gives_in_the_same_order():
    model = _tangled()
    assert submodules(model) == list(model.modules())
    assert [id(p) for p in parameters_of(model)] == [id(p) for p in model.parameters()]
    expected = [*model.parameters(), *model.buffers()]
    assert [id(t) for t in tensors_of(model)] == [id(t) for t in expected]
    assert len(submodules(model)) < len(list(model.modules(remove_duplicate=False)))


def _modes(model):
    return [m.training for m in model.modules()]


@pytest.mark.parametrize("mode", [True, False])
@pytest.mark.parametrize("n_kept", [0, 1, 2])
def test_set_modes_sets_what_train_and_eval_set(mode, n_kept):
    model = _tangled()
    model[0][2].eval()  # a mixed start
    expected = copy.deepcopy(model)
    kept = [model[1]["b"], model[0]][:n_kept]
    expected.train(mode)
    if mode:
        for k in [expected[1]["b"], expected[0]][:n_kept]:
            k.eval()
    assert set_modes(model, mode, iter(kept))  # any iterable of modules
    assert _modes(model) == _modes(expected)
    assert len(set(_modes(model))) == (2 if mode and n_kept else 1)


class _OwnTrain(nn.Linear):
    def train(self, mode=True):
        return super().train(mode)


class _OwnEval(nn.Linear):
    def eval(self):
        return super().eval()


class _OwnSetattr(nn.Linear):
    def __setattr__(self, name, value):
        super().__setattr__(name, value)


class _OwnChildren(nn.Linear):
    def children(self):
        return iter(())


def _train_set_on_the_module(*args):
    module = nn.Linear(*args)
    module.train = lambda mode=True: nn.Module.train(module, mode)
    return module


@pytest.mark.parametrize(
    "odd, where",
    [
        (_OwnTrain, "below"),
        (_OwnEval, "kept"),
        (_OwnSetattr, "below"),
        (_OwnChildren, "below"),
        (_train_set_on_the_module, "below"),
    ],
)
def test_set_modes_leaves_modules_with_their_own_methods_to_them(odd, where):
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(odd(2, 2), nn.Dropout()))
    model.eval()
    kept = [model[1][0]] if where == "kept" else []
    assert not set_modes(model, True, kept)
    assert not any(_modes(model))  # nothing changed: the caller calls train()
    assert set_modes(model[1], True) is (odd is _OwnEval)  # eval is called on kept only
    assert not set_modes(model, 1)  # nn.Module.train raises for a mode that is not a bool


def _module(depth):
    blocks = [nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6)), nn.Linear(6, 5)]
    body = Body(blocks)
    body.infer_output_dim(torch.zeros(2, 4))
    module = TransferModule(body, 3, Frozen())
    module.use(UnfreezeTop(depth, backbone_lr=1e-3))
    return module


@pytest.mark.parametrize("depth", [0, 1])
def test_bodies_and_transfer_modules_set_modes_in_one_walk(depth):
    # depth 0 keeps in eval the top block and pool as one unit, a module
    # list made for the purpose, outside the module tree.
    module = _module(depth)
    assert set_modes(module, True, module._kept_in_eval)  # Body.train counts as nn.Module's
    assert not module._custom_train
    module.eval()
    assert not any(_modes(module))
    module.train()
    assert module.training and module.head.training
    assert module.body.blocks[1].training is (depth == 1)
    assert not module.body.blocks[0].training and not module.body.blocks[0][1].training
    for mode in (True, False):  # whatever the mode it is in
        module.train(mode)
        for odd in (1, None):
            with pytest.raises(ValueError, match="boolean"):
                module.train(odd)
            with pytest.raises(ValueError, match="boolean"):
                module.body.train(odd)


def test_a_body_calls_the_train_of_a_block_that_has_its_own():
    calls = []

    class Recorded(nn.Linear):
        def train(self, mode=True):
            calls.append(mode)
            return super().train(mode)

    body = Body([nn.Linear(4, 4), Recorded(4, 4)])
    body.train(False)
    body.train()
    assert calls == [False, True] and all(_modes(body))


@pytest.mark.parametrize("memory", [False, True])
def test_a_fitted_model_is_freed_as_soon_as_it_is_dropped(images, memory, tmp_path):
    # No reference cycle holds the modules: a search drops each fold's model
    # and its memory comes back at once, not at the next garbage collection.
    import gc
    import weakref

    import numpy as np

    from sktransfer import FineTunedClassifier

    from .conftest import make_cnn

    X, y = images
    X = (X.transpose(0, 3, 1, 2) / 255).astype(np.float32)
    clf = FineTunedClassifier(
        backbone=make_cnn(),
        unfreeze_depth=1,
        max_epochs=2,
        warmup_epochs=1,
        memory=str(tmp_path) if memory else None,
    )
    gc.collect()
    gc.disable()  # no collection may free a cycle
    try:
        clf.fit(X, y).score(X, y)
        refs = [weakref.ref(m) for m in (clf.net_, clf.net_.module_, clf.net_.module_.body)]
        del clf
        assert [ref() for ref in refs] == [None] * len(refs)
    finally:
        gc.enable()
