"""lr=find (effnet.training.lr_find): Lightning's learning-rate finder on the run's own setup, its
plot, its numbers and the command it prints; nothing trained, nothing left behind."""

import json
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

from effnet.start import start
from effnet.training.lr_find import command_with_lr, find, steepest
from tests.helpers import FAST, compose_cfg, make_images

# a sweep that stays below divergence, so every planned step runs
SWEEP = ["model=mobilenetv3_small", "data.threads=1", "lr_find.min_lr=1e-6", "lr_find.max_lr=1e-2"]


def found(tmp_path, monkeypatch, capsys, *overrides):
    """lr=find from the command line `overrides`, as train.py runs it: (lr_find.json, run folder, stdout)."""
    data = tmp_path / "data"
    make_images(data / "train", {"ant": 8, "bee": 8})  # 16 training images
    make_images(data / "val", {"ant": 2, "bee": 2}, seed=1)
    args = [f"data.root={data}", *FAST, *SWEEP, "lr=find", *overrides]
    monkeypatch.setattr(sys, "argv", ["train.py", *args])  # the command the finder rewrites
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    record = find(start(compose_cfg(args), run_dir))
    return record, run_dir, capsys.readouterr().out


def assert_nothing_trained_or_left(tmp_path, run_dir):
    assert {p.name for p in run_dir.iterdir()} == {"lr_find.png", "lr_find.json", "run.lock"}
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob(".lr_find*"))
    assert not (tmp_path / "lightning_logs").exists()


def test_random_init_sweeps_one_lr_over_the_steps_the_run_has(tmp_path, monkeypatch, capsys):
    # 16 images in batches of 4 for 4 epochs: 16 optimizer steps, fewer than lr_find.steps (100)
    record, run_dir, out = found(tmp_path, monkeypatch, capsys, "epochs=4")
    assert record == json.loads((run_dir / "lr_find.json").read_text())
    assert record["steps"] == record["steps_run"] == len(record["lr"]) == 16
    lrs = record["lr"]
    assert lrs[0] == pytest.approx(1e-6) and lrs == sorted(lrs) and lrs[-1] == pytest.approx(1e-2)
    assert record["suggestion"] in lrs and record["backbone_lr_scale"] == 1.0
    assert all(head == backbone for head, backbone in record["optimizer_lrs"])
    assert "varied the lr (one for every layer) from 1e-06 to 0.01 over 16 steps" in out
    value = f"{record['suggestion']:.2g}"
    assert f"suggested lr: {value}," in out
    assert f"train with it: python train.py data.root={tmp_path / 'data'}" in out
    assert out.split("train with it: ")[1].splitlines()[0].endswith(f"lr={value} epochs=4")
    assert_nothing_trained_or_left(tmp_path, run_dir)


def test_a_pretrained_backbone_follows_the_head_at_its_scale(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "imagenet-like.safetensors"
    source = timm.create_model("mobilenetv3_small_100", num_classes=1000)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, weights)
    record, run_dir, out = found(
        tmp_path,
        monkeypatch,
        capsys,
        f"model.weights={weights}",
        "epochs=5",
        "lr_find.steps=13",
        "optimizer.backbone_lr_scale=0.4",
    )
    assert record["backbone_lr_scale"] == 0.4 and record["steps"] == record["steps_run"] == 13
    heads = [head for head, _ in record["optimizer_lrs"]]
    assert heads == pytest.approx(record["lr"])  # the lr the optimizer's head groups stepped with
    for head, backbone in record["optimizer_lrs"]:
        assert backbone == pytest.approx(0.4 * head)
    assert "varied the head's lr from 1e-06 to 0.01 over 13 steps" in out
    assert "the pretrained backbone's lr followed at x0.4" in out
    assert f"(the backbone's {record['suggestion'] * 0.4:.2g})" in out
    assert_nothing_trained_or_left(tmp_path, run_dir)


def test_the_command_gets_the_suggestion_in_place_of_find():
    assert command_with_lr("python train.py data.root=/d lr=find epochs=3", 0.00123) == (
        "python train.py data.root=/d lr=0.0012 epochs=3"
    )
    assert command_with_lr("python train.py 'data.root=/my photos' +lr=find", 3e-5) == (
        "python train.py 'data.root=/my photos' lr=3e-05"
    )


def test_the_suggestion_is_the_steepest_fall_per_decade_of_lr():
    """The curve of hymenoptera/Lite0 in miniature: a flat, slightly wiggling start at tiny lrs, the
    real fall around 1e-3, divergence at the end. Against the lr itself (Lightning 2.6's
    suggestion) the wiggle at 1e-6 wins; per decade, the fall does."""
    lrs = [10 ** (-7 + 7 * i / 59) for i in range(60)]
    losses = [0.70 - (0.002 if 14 <= i <= 16 else 0.0) for i in range(35)]
    losses += [0.70 - 0.02 * (i - 34) for i in range(35, 45)] + [0.5 + 0.1 * (i - 44) for i in range(45, 60)]
    found = steepest(lrs, losses)
    assert 1e-3 < found < 1e-2, found
    assert losses[lrs.index(found)] < losses[30], "on the fall, not the plateau"
    assert steepest(lrs[:12], losses[:12]) is None, "too few points after the skips"
