"""scripts/gpu-check.sh --dry: the GPU check's steps, shortened, on the CPU. It runs whole programs
(pytest, the memory model, bench.py), so it takes about a minute: marked `slow`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_dry_run_goes_through_every_step_into_one_report(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        ["bash", "scripts/gpu-check.sh", "--dry"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["gpu-check.txt"], "one file under $OUT"
    report = (tmp_path / "gpu-check.txt").read_text()
    for step in ("versions", "gpu tests", "memory", "bench"):
        assert f"== {step}: exit 0" in report
    assert "6 skipped" in report, "the gpu tests are collected, and skip without CUDA"
    assert "b4\t8gb\t380\t19\tFalse" in report, "the memory model's micro-batch for B4 on 8 GB"
    assert '"ceiling"' in report, "bench.json is in the report"
    assert report.rstrip().endswith(f"all steps passed; report: {tmp_path / 'gpu-check.txt'}")
