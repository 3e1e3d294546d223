"""The bundle's timm/ folder: plain timm loads the fine-tuned model (effnet not imported, offline)
with the run's classes, preprocessing and logits."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from effnet.deploy import predict, timm_folder
from effnet.preprocessing import Preprocessing
from effnet.training.model import build
from tests.helpers import export_info

# What a user without effnet runs: timm alone, its own loader and its own data config.
PLAIN_TIMM = r"""
import json, sys
import numpy as np, timm, torch
from timm.data import resolve_data_config

folder, images = sys.argv[1], np.load(sys.argv[2])
m = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
data = resolve_data_config({}, model=m)
mean, std = (torch.tensor(data[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
with torch.no_grad():
    logits = m((torch.from_numpy(images).float() / 255 - mean) / std)
assert not any(name.split(".")[0] == "effnet" for name in sys.modules), "effnet was imported"
print(json.dumps({
    "logits": logits.tolist(), "num_classes": m.num_classes, "labels": m.pretrained_cfg["label_names"],
    "data": {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()},
}))
"""


def test_plain_timm_loads_the_fine_tuned_model_with_its_logits_and_preprocessing(
    onnx_bundle, trained_run, tmp_path
):
    folder = onnx_bundle / "timm"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TIMM_USE_OLD_CACHE="0", HF_HOME=str(tmp_path / "no-hub"))
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_TIMM, str(folder), str(tmp_path / "images.npy")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    plain = json.loads(done.stdout.splitlines()[-1])

    effnet = predict.load_predictor(str(trained_run))  # the run's best.ckpt, as eval.py loads it
    assert np.allclose(plain["logits"], effnet(images), atol=1e-4)
    assert plain["num_classes"] == 3 and plain["labels"] == ["ant", "bee", "wasp"] == effnet.classes
    prep = effnet.prep
    assert plain["data"] == {
        "input_size": [3, 32, 32],
        "interpolation": prep.interpolation,
        "mean": list(prep.mean),
        "std": list(prep.std),
        "crop_pct": prep.crop_pct,
        "crop_mode": "center",
    }


def test_the_timm_folder_is_verified_and_listed_like_every_exported_file(onnx_bundle):
    info = export_info(onnx_bundle)
    row = info["artefacts"]["timm"]
    assert row["file"] == "timm/model.safetensors" and row["images"] == 12
    assert row["max_abs_logit_diff"] <= 1e-4 and row["top1"] == info["artefacts"]["pytorch"]["top1"]
    assert {"timm/model.safetensors", "timm/config.json"} <= set(info["files"])
    assert "timm" not in info["latency"]  # the same eager network as the pytorch row
    assert 'timm.create_model("local-dir:' in (onnx_bundle / "model_card.md").read_text()


@pytest.mark.parametrize(
    "backbone",
    [
        "resnet10t",  # classifier `fc`
        "convnext_atto",  # `head.fc`, after the head's own norm
        "vit_tiny_patch16_224",  # `head`; built for one input size
    ],
)
def test_other_architectures_map_onto_their_timm_classifier(backbone, tmp_path):
    """Random weights, no training: each family names its classifier differently."""
    torch.manual_seed(0)
    net = build(backbone, ["a", "b"], 32, dropout=0.3).eval()
    prep = Preprocessing(32, 0.9, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    timm_folder.write(net, backbone, prep, ["a", "b"], tmp_path / "timm")
    loaded = timm_folder.load(tmp_path / "timm")
    assert loaded.classes == ["a", "b"] and loaded.prep == prep
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        expected = net((images.float() / 255 - 0.5) / 0.5).numpy()
    assert np.allclose(loaded(images.numpy()), expected, atol=1e-4)


def test_a_head_with_hidden_layers_gets_no_timm_folder():
    assert timm_folder.unsupported(build("mobilenetv3_small_100", ["a", "b"], 32, 0.2)) is None
    why = timm_folder.unsupported(build("mobilenetv3_small_100", ["a", "b"], 32, 0.2, hidden=[16]))
    assert why == "its head has hidden layers (model.head.hidden), which no timm classifier has"
