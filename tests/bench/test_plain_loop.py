"""effnet.bench.plain_loop alone, as README's "Speed" section runs it: python -m effnet.bench.plain_loop ROOT."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.helpers import ROOT, source_path


def test_the_plain_loop_runs_alone_on_a_folder_of_jpegs(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("ants", "bees"):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                tmp_path / name / f"{i}.jpg"
            )
    args = ["--backbone", "mobilenetv3_small_100", "--image-size", "32", "--batch", "4", "--workers", "0"]
    result = subprocess.run(
        [sys.executable, "-m", "effnet.bench.plain_loop", str(tmp_path), *args, "--epochs", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": source_path()},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("images/s per epoch: ")
