"""Atomic checkpoint writes and the RNG state that makes resume exact (the resumed runs themselves,
and two deterministic runs compared, are in test_interrupts.py)."""

from __future__ import annotations

import csv
import random

import numpy as np
import pytest
import torch

from effnet import checkpoints, runs


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
