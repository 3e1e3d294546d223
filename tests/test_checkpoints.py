"""Atomic checkpoint writes, the RNG state that makes resume exact, and deterministic runs."""

from __future__ import annotations

import csv
import random

import numpy as np
import pytest
import torch

from effnet import checkpoints, runs
from effnet.train import run
from tests.conftest import FAST, compose_cfg


def test_a_write_that_dies_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    io = checkpoints.AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def dies_halfway(obj, file):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # what a Ctrl-C or a kill does mid-write

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert runs.is_complete(path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert checkpoints.remove_stale_temporaries(tmp_path) == [tmp_path / "last.ckpt.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    states = checkpoints.rng_states()
    expected = torch.rand(3), random.random(), np.random.rand()
    torch.save({"rng": states}, tmp_path / "s.ckpt")
    torch.manual_seed(9), random.seed(9), np.random.seed(9)
    checkpoints.set_rng_states(torch.load(tmp_path / "s.ckpt", weights_only=True)["rng"])
    again = torch.rand(3), random.random(), np.random.rand()
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_replayed_epochs_are_trimmed_from_metrics_csv(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,val/acc\n0,4,0.5\n,5,\n1,9,0.6\n2,10,\n")
    assert checkpoints.trim_metrics(path, next_epoch=1) == 2
    with open(path) as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", ""]


def _metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    keys = ("epoch", "train/loss_epoch", "val/loss", "val/acc")
    return [{k: r[k] for k in keys} for r in rows if r.get("val/acc") or r.get("train/loss_epoch")]


def test_deterministic_runs_give_identical_metrics(flat_folder, tmp_path):
    overrides = [f"data.root={flat_folder}", *FAST, "model=mobilenetv3_small", "trainer.deterministic=true"]
    for name in ("a", "b"):
        run(compose_cfg(overrides), tmp_path / name)
    first, second = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert first and first == second
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
