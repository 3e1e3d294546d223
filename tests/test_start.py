"""effnet.start: each step of a start happens once per command (train.py as a user runs it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import FAST, ROOT, make_images

# train.py in a fresh process, with the steps of a start counted where they are defined: a second
# walk, a second validation or a second split would each be counted, whoever calls it.
COUNTING = r"""
import atexit, collections, json, runpy, sys
from effnet.cli import validate as validation
from effnet.data import folders, scan
calls = collections.Counter()

def counted(module, name):
    real = getattr(module, name)
    def wrapper(*args, **kwargs):
        calls[name] += 1
        return real(*args, **kwargs)
    setattr(module, name, wrapper)

from PIL import Image
for module, name in (
    (folders, "walk"), (folders, "discover"), (scan, "scan_folder"), (validation, "validate"), (Image, "open")
):
    counted(module, name)
import effnet.start  # binds `validate` from the counted module
def report():
    heavy = [m for m in ("lightning", "timm", "torch") if m in sys.modules]
    print("CALLS " + json.dumps({**calls, **({"imported": heavy} if heavy else {})}), file=sys.stderr)

atexit.register(report)
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def counted_train(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, dict]:
    result = subprocess.run(
        [sys.executable, "-c", COUNTING, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    line = next((x for x in result.stderr.splitlines() if x.startswith("CALLS ")), "CALLS {}")
    return result, json.loads(line[len("CALLS ") :])


@pytest.fixture
def work(tmp_path: Path) -> Path:
    make_images(tmp_path / "data", {"ant": 8, "bee": 8}, size=32)
    (tmp_path / "train.py").symlink_to(ROOT / "train.py")
    return tmp_path


def test_a_dry_run_a_run_and_its_resume_each_walk_scan_split_and_validate_once(work):
    once = {"walk": 1, "scan_folder": 1, "discover": 1, "validate": 1}
    base = ["data.root=data", *FAST, "data.cache=none", "hydra.run.dir=outputs/run"]

    # data.cache=auto sizes its store from a sample of the images: from the scan, not a second open
    dry, calls = counted_train([*base, "dry_run=true", "data.cache=auto"], work)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert calls == {**once, "open": 16, "imported": ["timm", "torch"]}  # cold: each file opened once
    assert not (work / "outputs" / "run").exists()  # a dry run claims no folder

    dry, calls = counted_train([*base, "dry_run=true", "data.cache=auto"], work)
    # warm: the scan cache answers, no file is opened, and the remembered preprocessing leaves
    # timm, torch and Lightning unimported
    assert calls == once

    trained, calls = counted_train(base, work)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert {k: v for k, v in calls.items() if k not in ("open", "imported")} == once  # training opens them
    # the dry run's scan served the run: every file came from the scan cache
    report = json.loads((work / "outputs" / "run" / "data_report.json").read_text())
    assert report["cached"] == report["files"] == 16

    resumed, calls = counted_train([*base, "epochs=2", "ckpt_path=outputs/run"], work)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the split is the run's own; the one discover finds the classes there now
    assert {k: v for k, v in calls.items() if k not in ("open", "imported")} == once
    assert "resuming from" in (work / "outputs" / "run" / "train.log").read_text()
