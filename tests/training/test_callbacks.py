from types import SimpleNamespace

from effnet.training.callbacks import FreezeBackbone
from effnet.training.module import ClassifierModule
from tests.helpers import module_sections


def test_backbone_trains_again_after_the_frozen_epochs():
    module = ClassifierModule(**module_sections())
    freeze = FreezeBackbone(epochs=1)
    freeze.on_train_epoch_start(SimpleNamespace(current_epoch=0), module)
    freeze.on_train_batch_start(SimpleNamespace(current_epoch=0), module, None, 0)
    backbone = module.net.backbone
    assert not backbone.training and not any(p.requires_grad for p in backbone.parameters())
    freeze.on_train_epoch_start(SimpleNamespace(current_epoch=1), module)
    assert backbone.training, "batch norm statistics and drop-path must work again after unfreezing"
    assert all(p.requires_grad for p in backbone.parameters())
