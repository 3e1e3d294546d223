"""Reading checkpoints back: weights_only, one line for anything else, and checkpoints written
before the module took sections still evaluate, predict and export."""

import json

import pytest
import torch

from effnet.checkpoints import read
from effnet.deploy import bundle, predict
from effnet.errors import UserError
from tests.helpers import compose_cfg

# What a checkpoint's hyper_parameters looked like before the run plan (one flat dict).
FLAT = {
    "backbone": "mobilenetv3_small_100",
    "classes": ["ant", "bee", "wasp"],
    "image_size": 32,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "dropout": 0.2,
    "hidden": [],
    "drop_path": 0.0,
    "lr": 0.003,
    "epochs": 2,
    "optimizer": "adamw",
    "weight_decay": 0.01,
    "scheduler": "cosine",
    "warmup_epochs": 0,
    "min_lr": 1e-6,
    "label_smoothing": 0.1,
    "mixup": 0.0,
    "cutmix": 0.0,
    "erase_prob": 0.0,
    "ema_decay": None,
    "channels_last": False,
}


class Payload:
    """Any class: loading it back would need arbitrary unpickling."""


def test_pickles_and_non_checkpoints_are_one_line(tmp_path):
    evil = tmp_path / "evil.ckpt"
    torch.save({"hyper_parameters": {"x": Payload()}}, evil)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    weights = tmp_path / "weights.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, weights)
    for path, message in (
        (evil, "refusing to load, it needs arbitrary unpickling"),
        (text, "not a PyTorch checkpoint"),
        (weights, "not an effnet checkpoint"),
    ):
        with pytest.raises(UserError, match=message):
            read.read(path)


def test_flat_hyper_parameters_map_onto_the_sections():
    args = read.sections(FLAT)
    assert (
        args["network"]["backbone"] == "mobilenetv3_small_100"
        and args["network"]["classes"] == FLAT["classes"]
    )
    assert args["optimisation"]["epochs"] == 2 and args["regularisation"]["label_smoothing"] == 0.1
    # crop and interpolation were never saved: the backbone's timm config, as the old code used
    assert args["preprocessing"] == {
        "image_size": 32,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": FLAT["mean"],
        "std": FLAT["std"],
    }


def test_a_checkpoint_from_before_the_sections_still_predicts_and_exports(trained_run, tmp_path):
    """The shared run's weights under the old flat hyper-parameters: same logits, same bundle."""
    raw = torch.load(trained_run / "checkpoints" / "best.ckpt", weights_only=True, map_location="cpu")
    old = {**raw, "hyper_parameters": {**FLAT, "lr": raw["hyper_parameters"]["optimisation"]["lr"]}}
    path = tmp_path / "old" / "checkpoints" / "best.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(old, path)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8).numpy()
    new_pred = predict.load_predictor(str(trained_run / "checkpoints" / "best.ckpt"))
    old_pred = predict.load_predictor(str(path))
    assert old_pred.classes == new_pred.classes and old_pred.prep == new_pred.prep
    assert (old_pred(images) == new_pred(images)).all()

    from effnet.deploy.export import export as export_run

    out = tmp_path / "bundle"
    cfg = compose_cfg(
        [
            f"ckpt={path}",
            f"out={out}",
            "format=safetensors",
            f"data.root={trained_run.parent / 'data'}",
            "bench.enabled=false",
            "num_workers=0",
        ],
        config_name="export",
    )
    export_run(cfg)
    assert json.loads((out / bundle.PREPROCESSING_FILE).read_text())["mean"] == FLAT["mean"]
    assert (predict.load_predictor(str(out))(images) == new_pred(images)).all()
