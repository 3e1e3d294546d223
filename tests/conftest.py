"""Shared fixtures: tiny synthetic image folders, and one trained run and its exported bundle per
session for the eval, predict and export tests. No network, no downloads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from effnet.cli.app import register_resolvers
from tests import slurm_cluster as cluster
from tests.helpers import TINY, compose_cfg, make_images, source_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
# Every process a test starts (train.py, torchrun, a shell, a SLURM job) runs this checkout's code,
# not the one an editable install points at (a git worktree's main).
os.environ["PYTHONPATH"] = source_path()


@pytest.fixture(scope="session", autouse=True)
def _resolvers():
    register_resolvers()


@pytest.fixture
def flat_folder(tmp_path: Path) -> Path:
    """root/<class>/ with three classes of 8 images: val is held out."""
    return make_images(tmp_path / "flat", {"ant": 8, "bee": 8, "wasp": 8})


@pytest.fixture
def split_folder(tmp_path: Path) -> Path:
    """root/train/<class>/ + root/val/<class>/."""
    root = tmp_path / "split"
    make_images(root / "train", {"ant": 8, "bee": 8})
    make_images(root / "val", {"ant": 3, "bee": 3}, seed=1)
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A tiny MobileNetV3 trained for 2 epochs on 3 classes (shared: eval, predict, export)."""
    from effnet.training.run import run

    base = tmp_path_factory.mktemp("trained")
    data = base / "data"
    make_images(data / "train", {"ant": 10, "bee": 10, "wasp": 10}, size=40)
    make_images(data / "val", {"ant": 4, "bee": 4, "wasp": 4}, size=40, seed=1)
    run_dir = base / "run"
    run(compose_cfg([f"data.root={data}", *TINY]), run_dir)
    return run_dir


@pytest.fixture(scope="session")
def onnx_bundle(trained_run: Path, tmp_path_factory) -> Path:
    """ONNX fp32 + int8 through export.run. The tests use the legacy exporter (several times
    faster than dynamo on a CPU); what they check about the bundle is the same for both."""
    from effnet.deploy.export import run as export_run

    out = tmp_path_factory.mktemp("bundle") / "onnx"
    overrides = [
        f"ckpt={trained_run}",
        "quantize=int8",
        f"out={out}",
        "exporter=torchscript",
        "bench.repeats=2",
        "bench.batch_sizes=[1,4]",
        "calibration.images=12",
        "num_workers=0",
    ]
    export_run(compose_cfg(overrides, config_name="export"))
    return out


@pytest.fixture(scope="session")
def slurm_cluster() -> cluster.SlurmCluster:
    """A real single-node SLURM cluster on this machine (scripts/slurm-cluster.sh; needs root)."""
    return cluster.bring_up()
