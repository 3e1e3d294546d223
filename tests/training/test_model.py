"""The network: any timm backbone without its classifier, a head, and the builder the module uses."""

import pytest
import torch
from timm.layers import BatchNormAct2d
from timm.layers.norm_act import SyncBatchNormAct
from torch import nn

from effnet.errors import UserError
from effnet.training.model import Classifier, build, create_backbone


def test_head_has_hidden_layers_and_dropout():
    net = Classifier(create_backbone("efficientnet_b0"), num_classes=5, dropout=0.3, hidden=[64, 32])
    linears = [m for m in net.head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1280, 64), (64, 32), (32, 5)]
    assert all(m.p == 0.3 for m in net.head if isinstance(m, nn.Dropout))
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_any_timm_backbone_and_unknown_names():
    net = Classifier(create_backbone("mobilenetv3_small_100"), num_classes=3, dropout=0.2).eval()
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(UserError, match="model.backbone=efficientnet_b99: not a timm model"):
        create_backbone("efficientnet_b99")


def test_fixed_size_backbones_follow_image_size():
    net = Classifier(
        create_backbone("vit_tiny_patch16_224", image_size=32), num_classes=2, dropout=0.0
    ).eval()
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 2)


def test_timm_sync_batchnorm_keeps_the_activation():
    net = Classifier(create_backbone("efficientnet_b0"), 2, 0.2)
    from timm.layers import convert_sync_batchnorm

    converted = convert_sync_batchnorm(net)
    norms = [m for m in converted.modules() if isinstance(m, SyncBatchNormAct)]
    assert norms and not any(type(m) is BatchNormAct2d for m in converted.modules())
    assert isinstance(converted.backbone.bn1.act, nn.SiLU)  # Lightning's converter would leave no act


def test_build_makes_the_network_a_plan_section_describes():
    net = build("mobilenetv3_small_100", ["a", "b", "c"], 32, dropout=0.3, hidden=[8], drop_path=0.1)
    assert net.head[-1].out_features == 3 and net.head[0].out_features == 8
    assert all(m.p == 0.3 for m in net.head if isinstance(m, nn.Dropout))
    assert net.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
