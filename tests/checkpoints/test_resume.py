"""The state that makes resume exact (the resumed runs themselves, and two deterministic runs
compared, are in tests/training/test_interrupts.py)."""

from __future__ import annotations

import csv
import random

import numpy as np
import torch

from effnet.checkpoints import resume


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    states = resume.rng_states()
    expected = torch.rand(3), random.random(), np.random.rand()
    torch.save({"rng": states}, tmp_path / "s.ckpt")
    torch.manual_seed(9), random.seed(9), np.random.seed(9)
    resume.set_rng_states(torch.load(tmp_path / "s.ckpt", weights_only=True)["rng"])
    again = torch.rand(3), random.random(), np.random.rand()
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_replayed_epochs_are_trimmed_from_metrics_csv(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,val/acc\n0,4,0.5\n,5,\n1,9,0.6\n2,10,\n")
    assert resume.trim_metrics(path, next_epoch=1) == 2
    with open(path) as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", ""]


def test_planned_epochs_reads_new_and_old_hyper_parameters(tmp_path):
    torch.save({"hyper_parameters": {"optimisation": {"epochs": 30}}}, tmp_path / "new.ckpt")
    torch.save({"hyper_parameters": {"epochs": 12, "backbone": "efficientnet_b0"}}, tmp_path / "old.ckpt")
    torch.save({"epoch": 4, "effnet_resume": {"next_epoch": 5}}, tmp_path / "state.ckpt")
    assert resume.planned_epochs(tmp_path / "new.ckpt") == 30
    assert resume.planned_epochs(tmp_path / "old.ckpt") == 12
    assert resume.resume_epoch(tmp_path / "state.ckpt") == 5
