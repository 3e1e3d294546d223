"""Shared fixtures: tiny synthetic image folders and composed configs. No network, no downloads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from effnet.cli import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
TRAIN_PY = ROOT / "train.py"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

# Small, fast and offline: what every training test adds to its overrides.
FAST = [
    "model.pretrained=false",
    "image_size=32",
    "batch_size=4",
    "epochs=1",
    "data.num_workers=0",
    "scheduler.warmup_epochs=0",
    "trainer.accelerator=cpu",
]


def make_images(folder: Path, classes: dict[str, int], size: int = 40, seed: int = 0) -> Path:
    """folder/<class>/<i>.png with a class-specific colour, so a model can learn something."""
    rng = np.random.default_rng(seed)
    for c, (name, count) in enumerate(classes.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            base = np.zeros((size, size, 3)) + 60
            base[..., c % 3] = 200
            pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i:03d}.png")
    return folder


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


@pytest.fixture(scope="session", autouse=True)
def _resolvers():
    register_resolvers()


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def run_train(
    args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None, script: Path = TRAIN_PY
) -> subprocess.CompletedProcess:
    """train.py (or another entry script) in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
