"""A real 2-process CPU DDP run (gloo) in which rank 1 raises: every process ends, non-zero, soon,
and the last line the user reads is rank 1's error."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.helpers import CONF_DIR, FAST, make_images, run_train

# train.py, except that rank 1 raises in its second training step. Lightning's launcher starts
# rank 1 by running this same script again, so the fault travels with it.
FAULTY_TRAIN_PY = f"""
from pathlib import Path
from effnet.training import module
from effnet.cli.app import main

step = module.ClassifierModule.training_step

def failing_step(self, batch, batch_idx):
    if self.global_rank == 1 and batch_idx == 1:
        raise ValueError("disk quota exceeded on rank 1")
    return step(self, batch, batch_idx)

module.ClassifierModule.training_step = failing_step
main(config_dir=Path({str(CONF_DIR)!r}), config_name="train")
"""


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text` (a path unique to this test)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if text in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                found.append(int(pid))
        except OSError:
            pass
    return found


def test_a_failing_rank_ends_every_rank_and_its_error_is_shown(tmp_path):
    root = make_images(tmp_path / "data", {"ant": 8, "bee": 8})
    script = tmp_path / "faulty_train.py"
    script.write_text(FAULTY_TRAIN_PY)
    args = [
        f"data.root={root}",
        *FAST,
        "model=mobilenetv3_small",
        "trainer=ddp",
        "trainer.devices=2",
        "epochs=2",
    ]
    result = run_train(args, cwd=tmp_path, script=script)
    ended = time.time()
    assert result.returncode != 0
    (record,) = tmp_path.glob("outputs/train/*/failures/rank-1.txt")
    failed_at = float(record.read_text().split()[0])
    assert ended - failed_at < 60, f"took {ended - failed_at:.0f} s to end after rank 1 failed"
    assert "ValueError: disk quota exceeded on rank 1" in result.stderr
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert "rank 1 failed: ValueError: disk quota exceeded on rank 1" in last, result.stderr[-2000:]
    assert "Connection closed" not in result.stderr.split("disk quota exceeded on rank 1")[-1]
    time.sleep(1)
    assert processes_mentioning(str(root)) == [], "a rank is still running"
