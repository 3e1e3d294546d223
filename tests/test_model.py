import pickle
import time

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import BatchNormAct2d
from timm.layers.norm_act import SyncBatchNormAct
from torch import nn

from effnet.errors import UserError
from effnet.model import Classifier, ClassifierModule, create_backbone, load_pretrained, load_weights


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


def _trained_like(name: str) -> nn.Module:
    """A full timm model (with a 1000-class classifier) whose weights differ from a fresh init."""
    torch.manual_seed(1)
    model = timm.create_model(name, num_classes=1000)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    return model


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_loads_without_classifier(tmp_path, suffix):
    source = _trained_like("efficientnet_b0")
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": source.state_dict()}, path)
    else:
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    backbone = create_backbone("efficientnet_b0")
    report = load_weights(backbone, path)
    assert sorted(report.skipped_classifier) == ["classifier.bias", "classifier.weight"]
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert torch.equal(backbone.conv_stem.weight, source.conv_stem.weight)
    assert "classifier replaced: 2" in str(report)


def test_mismatched_weights_are_reported_not_fatal(tmp_path):
    path = tmp_path / "b1.pth"
    torch.save(_trained_like("efficientnet_b1").state_dict(), path)
    report = load_weights(create_backbone("efficientnet_b0"), path)
    assert report.loaded > 0 and (report.unexpected or report.mismatched)


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    with pytest.raises(UserError, match="refusing to unpickle"):
        load_weights(create_backbone("efficientnet_b0"), path)


def test_pretrained_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        UserError, match=r"model.pretrained=true: cannot fetch .* pass model.weights=/path/to/file"
    ):
        load_pretrained(create_backbone("efficientnet_b0"), "efficientnet_b0")


def test_unreachable_hub_fails_in_seconds(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    started = time.perf_counter()
    with pytest.raises(UserError, match="the hub is unreachable .*model.weights=/path/to/file"):
        load_pretrained(create_backbone("efficientnet_b0"), "efficientnet_b0")
    assert time.perf_counter() - started < 10


def test_timm_sync_batchnorm_keeps_the_activation():
    net = Classifier(create_backbone("efficientnet_b0"), 2, 0.2)
    from timm.layers import convert_sync_batchnorm

    converted = convert_sync_batchnorm(net)
    norms = [m for m in converted.modules() if isinstance(m, SyncBatchNormAct)]
    assert norms and not any(type(m) is BatchNormAct2d for m in converted.modules())
    assert isinstance(converted.backbone.bn1.act, nn.SiLU)  # Lightning's converter would leave no act


def test_module_normalises_uint8_on_the_device_side():
    module = ClassifierModule("efficientnet_b0", ["a", "b"], image_size=32)
    images = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
    out, labels = module.on_after_batch_transfer((images, torch.tensor([0, 1])), 0)
    expected = (1.0 - 0.485) / 0.229
    assert out.dtype == torch.float32 and torch.allclose(out[:, 0], torch.full_like(out[:, 0], expected))
    assert labels.tolist() == [0, 1]
