"""Strategies decide what trains; the pooling module belongs to the top block."""

import torch
from torch import nn

from sktransfer._modules import Body, TransferModule
from sktransfer._strategy import Frozen, Scratch, UnfreezeTop


def _body():
    blocks = [nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6)), nn.Linear(6, 5)]
    body = Body(blocks, pool=nn.LayerNorm(5))  # a pool with parameters, as ViT's fc_norm
    body.infer_output_dim(torch.zeros(2, 4))
    return body


def _trainable(module):
    return {name for name, p in module.named_parameters() if p.requires_grad}


def test_frozen_trains_the_head_only_and_keeps_the_body_in_eval():
    module = TransferModule(_body(), 3, Frozen())
    assert _trainable(module) == {"head.weight", "head.bias"}
    module.train()
    assert module.head.training and not any(m.training for m in module.body.modules())
    assert Frozen().cut(2) == 2


def test_unfreeze_top_trains_the_pool_with_the_top_block():
    module = TransferModule(_body(), 3, Frozen())
    groups = module.use(UnfreezeTop(1, backbone_lr=1e-4))
    top = {"blocks.1.weight", "blocks.1.bias", "pool.weight", "pool.bias"}
    assert _trainable(module.body) == top
    assert [g["lr"] for g in groups] == [1e-4]
    pool_params = {id(p) for p in module.body.pool.parameters()}
    assert pool_params <= {id(p) for p in groups[0]["params"]}
    assert UnfreezeTop(1, 1e-4).cut(2) == 1


def test_unfreeze_top_keeps_batchnorm_frozen_unless_asked():
    module = TransferModule(_body(), 3, Frozen())
    groups = module.use(UnfreezeTop(2, backbone_lr=1e-3, layer_decay=0.5))
    assert [g["lr"] for g in groups] == [1e-3, 5e-4]
    assert "blocks.0.1.weight" not in _trainable(module.body)
    module.train()
    assert not module.body.blocks[0][1].training and module.body.blocks[0][0].training
    module.use(UnfreezeTop(2, backbone_lr=1e-3, train_bn=True))
    module.train()
    assert "blocks.0.1.weight" in _trainable(module.body) and module.body.blocks[0][1].training


def test_scratch_trains_everything():
    module = TransferModule(_body(), 3, Scratch())
    assert _trainable(module) == {name for name, _ in module.named_parameters()}
    module.train()
    assert all(m.training for m in module.body.blocks.modules())
    assert Scratch().cut(2) == 0
