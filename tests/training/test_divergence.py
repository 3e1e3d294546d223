"""A diverging run (lr=1e9: nan losses from the second step) through train.py: it stops with one
line naming the step and the likely causes, exit status 2, and leaves only finite checkpoints."""

from __future__ import annotations

import json
import re

import pytest
import torch

from effnet.training.divergence import nonfinite_tensors
from tests.helpers import FAST, make_images, run_train

ARGS = [*FAST, "model=mobilenetv3_small", "aug=light", "lr=1e9", "epochs=3"]


@pytest.mark.parametrize(
    "patience, how",
    [
        ("3", r"3 steps in a row \(divergence.patience=3\)"),
        # never stopped by the loss: the check before each checkpoint still keeps nan weights out
        ("null", r"and the weights now hold nan or inf \(e.g. net\."),
    ],
    ids=["stopped by the loss", "stopped before a checkpoint"],
)
def test_a_diverging_run_stops_and_keeps_only_finite_checkpoints(patience, how, tmp_path):
    data = make_images(tmp_path / "data", {"ant": 12, "bee": 12})  # 5 training batches of 4
    run = tmp_path / "run"
    result = run_train(
        [f"data.root={data}", *ARGS, f"divergence.patience={patience}", f"hydra.run.dir={run}"], cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    line = result.stderr.strip().splitlines()[-1]
    assert re.match(
        r"effnet: error: training diverged: the training loss became (nan|inf|-inf) at step \d+ ", line
    )
    assert re.search(how, line), line
    assert "lr=1e+09: try 10x lower" in line and "fp16 overflow" in line
    assert not (run / "checkpoints" / "best.ckpt").exists(), "a diverged model is never best"
    assert not (run / "summary.json").exists()
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert last["effnet_resume"]["next_epoch"] == 0, "the last finite state: the start of the run"
    assert json.loads((run / "run.json").read_text())["classes"] == ["ant", "bee"]


def test_nonfinite_tensors_names_weights_and_buffers():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert nonfinite_tensors(net) == []
    with torch.no_grad():
        net[0].weight[0, 0] = float("inf")
    net[1].running_mean[1] = float("nan")
    assert nonfinite_tensors(net) == ["0.weight", "1.running_mean"]
