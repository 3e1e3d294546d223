"""Starting weights: files (safely, without their classifier), the hub, and the one-line errors."""

import pickle
import time

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from effnet.errors import UserError
from effnet.training.model import create_backbone
from effnet.training.weights import load_pretrained, load_weights


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
