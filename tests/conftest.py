"""Shared fixtures: tiny synthetic image folders, and one trained run and its exported bundle per
session for the eval, predict and export tests. No network, no downloads."""

from __future__ import annotations

import os
import platform
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
# The suite's xdist workers share the machine's cores: each worker's runs (and the processes they
# start) take their part of them through OMP_NUM_THREADS, which data.threads=auto honours, instead of
# every run taking all the cores and waiting on the others' threads. (Set in the workers only: the
# controller's environment, which they inherit, stays as the user left it.)
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault(
        "OMP_NUM_THREADS",
        str(max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))),
    )

# The versions the header records: what decides whether the suite's result carries to another machine.
HEADER_PACKAGES = ("torch", "torchvision", "lightning", "timm", "torchmetrics", "hydra-core", "optuna")


def pytest_report_header(config) -> list[str]:
    """One line of versions and whether the environment matches requirements.lock (`make` installs it)."""
    from importlib import metadata

    from scripts import lock

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    pins = lock.read_pins()
    drift = sorted(f"{n} {v} (lock {pins[n]})" for n in pins if (v := version(n)) and v != pins[n])
    state = (
        f"matches requirements.lock ({len(pins)} pins)"
        if not drift
        else f"{len(drift)} differ: " + ", ".join(drift)
    )
    versions = ", ".join(f"{n} {version(n)}" for n in HEADER_PACKAGES)
    return [f"effnet versions: python {platform.python_version()}, {versions}; lock: {state}"]


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "gpu: needs a CUDA device; skipped without one (scripts/gpu-check.sh runs them on a GPU)"
    )
    config.addinivalue_line(
        "markers",
        "slow: runs whole programs for a minute or more; part of the suite, -m 'not slow' leaves it out",
    )


def pytest_unconfigure(config) -> None:
    """The session is over: Python's collections while it tears down torch, Lightning and timm
    would take seconds in every worker (effnet.cli.app.quick_exit, for the same reason)."""
    import gc

    gc.freeze()


def pytest_collection_modifyitems(config, items) -> None:
    """`gpu` tests skip where torch sees no CUDA device (the CI machine, a laptop)."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device (scripts/gpu-check.sh runs it on a GPU machine)")
        for item in gpu:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """One intra-op thread, as effnet's runs on a shared 2-core machine have (data.threads): a
    forward pass there is many times faster on one thread (BENCHMARKS.md)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    from tests.helpers import start_and_run

    base = tmp_path_factory.mktemp("trained")
    data = base / "data"
    make_images(data / "train", {"ant": 10, "bee": 10, "wasp": 10}, size=40)
    make_images(data / "val", {"ant": 4, "bee": 4, "wasp": 4}, size=40, seed=1)
    run_dir = base / "run"
    start_and_run(compose_cfg([f"data.root={data}", *TINY]), run_dir)
    return run_dir


@pytest.fixture(scope="session")
def onnx_bundle(trained_run: Path, tmp_path_factory) -> Path:
    """ONNX fp32 + int8 through export.export. The tests use the legacy exporter (several times
    faster than dynamo on a CPU); what they check about the bundle is the same for both."""
    from effnet.deploy.export import export as export_run

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


@pytest.fixture
def small_disk(tmp_path: Path):
    """mount(size_bytes, read_only=False) -> a folder on a real tmpfs of that size (a full disk a
    mock write could not stand in for: torch's zip writer, Pillow, onnx fill it for real).
    Skipped where this process may not mount; unmounted afterwards."""
    import subprocess

    mounted: list[Path] = []

    def mount(size: int, read_only: bool = False) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip() or 'mount failed'}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)
