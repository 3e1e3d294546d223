"""One tiny trained run and its exported bundle per test session, shared by the eval, predict and
export tests (imported by those modules; cached so a session trains and exports once)."""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

import pytest

from effnet.train import run
from tests.conftest import FAST, ROOT, compose_cfg, make_images, run_train

CLASSES = {"ant": 10, "bee": 10, "wasp": 10}
TINY = [*FAST, "model=mobilenetv3_small", "epochs=2", "batch_size=8", "lr=3e-3"]


def run_script(script: str, args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """eval.py / predict.py / export.py in a fresh process, as a user runs them."""
    return run_train(args, cwd=cwd, timeout=timeout, script=ROOT / script)


@functools.cache
def _trained(base: Path) -> Path:
    data = base / "trained_data"
    make_images(data / "train", CLASSES, size=40)
    make_images(data / "val", {"ant": 4, "bee": 4, "wasp": 4}, size=40, seed=1)
    run_dir = base / "trained_run"
    run(compose_cfg([f"data.root={data}", *TINY]), run_dir)
    return run_dir


@functools.cache
def _bundle(base: Path) -> Path:
    """ONNX fp32 + int8 through export.run. The tests use the legacy exporter (several times
    faster than dynamo on a CPU); what they check about the bundle is the same for both."""
    from effnet.export import run as export_run

    out = base / "bundle"
    overrides = [
        f"ckpt={_trained(base)}",
        "quantize=int8",
        f"out={out}",
        "exporter=torchscript",
        "bench.repeats=2",
        "bench.batch_sizes=[1,4]",
        "calibration.images=12",
        "num_workers=0",
    ]
    export_run(compose("export", overrides))
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    return _trained(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def onnx_bundle(tmp_path_factory) -> Path:
    return _bundle(tmp_path_factory.getbasetemp())


def export_info(bundle: Path) -> dict:
    return json.loads((bundle / "export.json").read_text())


def compose(config_name: str, overrides: list[str]):
    """eval/predict/export configs composed as their scripts do, for in-process runs."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)
