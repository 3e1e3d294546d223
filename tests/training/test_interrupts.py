"""Killed and interrupted runs: real training subprocesses, killed at random points and resumed.

A run is stopped with SIGTERM, then killed with SIGKILL at a random moment and again while a
checkpoint is being written; each time it is resumed with the command the first stop printed. It must end with the same
metrics and weights as a run that was never interrupted (exact: the checkpoints are at epoch
boundaries, and the data order and augmentation are a function of (seed, epoch)).

The reference and the interrupted chain are separate processes with trainer.deterministic=true,
so this is also the test that two deterministic runs give identical metrics.
"""

from __future__ import annotations

import csv
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from effnet.checkpoints import find, resume
from effnet.training import interrupts
from tests.helpers import TRAIN_PY, make_images, run_train

METRICS = ("epoch", "step", "train/loss_epoch", "val/loss", "val/acc")
# A longer soak: EFFNET_KILL_POINTS=10 EFFNET_KILL_SEED=7 EFFNET_STOP_SIGNAL=SIGINT pytest tests/test_interrupts.py
KILL_POINTS = int(os.environ.get("EFFNET_KILL_POINTS", "2"))
STOP_SIGNAL = signal.Signals[os.environ.get("EFFNET_STOP_SIGNAL", "SIGTERM")]  # or SIGINT, SIGUSR1
EPOCHS = 2 if KILL_POINTS <= 2 else 3  # a longer chain needs a run long enough to be killed in
ARGS = [
    "model=mobilenetv3_small",
    "model.pretrained=false",
    "image_size=32",
    "batch_size=4",
    f"epochs={EPOCHS}",
    "data.num_workers=0",
    "scheduler.warmup_epochs=0",
    "trainer.accelerator=cpu",
    "aug=heavy",  # RandAugment, erasing and (below) mixup/cutmix: every RNG stream is in play
    "augment.heavy.mixup=0.2",
    "augment.heavy.cutmix=1.0",
    "model.ema=true",
    "trainer.deterministic=true",
]


def start(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(TRAIN_PY), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Poll until condition() holds; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise TimeoutError("condition not reached")


def scans(cwd: Path) -> int:
    """How many runs in cwd got past start-up (each logs one data scan line)."""
    return sum(log.read_text().count("data scan:") for log in cwd.glob("outputs/train/*/train.log"))


def epoch_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        reader = csv.DictReader(f)
        assert set(METRICS) <= set(reader.fieldnames or []), "a compared metric is not logged at all"
        all_rows = list(reader)
    epoch_rows = {r["epoch"]: r["train/loss_epoch"] for r in all_rows if r["train/loss_epoch"]}
    return [
        {**{k: r[k] for k in METRICS}, "train/loss_epoch": epoch_rows.get(r["epoch"])}
        for r in all_rows
        if r["val/acc"]
    ]


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def only_run(cwd: Path) -> Path:
    found = list((cwd / "outputs" / "train").iterdir())
    assert len(found) == 1, found
    return found[0]


def all_checkpoints_complete(run_dir: Path) -> None:
    for path in (run_dir / "checkpoints").glob("*.ckpt"):
        assert find.is_complete(path), f"{path.name} is incomplete after a kill"
        torch.load(path, weights_only=True)  # and it loads


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("data") / "root", {"ant": 10, "bee": 10}, size=32)


def test_killed_and_interrupted_runs_resume_to_identical_results(data, tmp_path):
    args = [f"data.root={data}", *ARGS]
    reference_cwd, killed_cwd = tmp_path / "reference", tmp_path / "killed"
    reference_cwd.mkdir(), killed_cwd.mkdir()
    proc = start(args, reference_cwd)
    wait_for(lambda: scans(reference_cwd) > 0, proc)
    started = time.monotonic()
    rc, output = finish(proc)
    assert rc == 0, output[-3000:]
    reference = only_run(reference_cwd)
    # kill points are drawn within the time the rest of the run takes on this machine
    per_epoch = (time.monotonic() - started) / EPOCHS

    def remaining(resume_args: list[str]) -> float:
        if resume_args == args:
            return EPOCHS * per_epoch
        done = resume.resume_epoch(find.in_folder(only_run(killed_cwd) / "checkpoints", "resume"))
        return (EPOCHS - done) * per_epoch

    rng = random.Random(int(os.environ.get("EFFNET_KILL_SEED", "5")))
    ckpts = killed_cwd / "outputs" / "train"

    # First a graceful stop (SIGTERM; or Ctrl-C, SLURM's SIGUSR1): the step finishes,
    # interrupted.ckpt is written, and one line holds the command that resumes the run.
    proc = start(args, killed_cwd)
    wait_for(lambda: scans(killed_cwd) > 0, proc)  # the signal handlers are in
    time.sleep(rng.uniform(0, 0.3 * remaining(args)))
    proc.send_signal(STOP_SIGNAL)
    rc, output = finish(proc)
    assert rc == 128 + STOP_SIGNAL, output[-3000:]
    line = next(
        ln for ln in output.splitlines() if ln.startswith(f"effnet: interrupted by {STOP_SIGNAL.name}")
    )
    run_dir = only_run(killed_cwd)
    assert (run_dir / "checkpoints" / "interrupted.ckpt").is_file()
    all_checkpoints_complete(run_dir)
    command = shlex.split(re.search(r"resume with: (.*?)  \(", line).group(1))
    assert command[0] == "python" and command[-1] == f"ckpt_path={run_dir}"
    assert command[2:-1] == args
    resume_args = command[2:]  # the printed command is what the next attempts run

    # Then SIGKILL at random moments, and while checkpoints are being written.
    kills = [STOP_SIGNAL.name]
    for point in range(KILL_POINTS):
        if not remaining(resume_args):  # a kill after the last epoch's checkpoint: nothing left
            break
        during_write = point % 3 == 1
        env = {"EFFNET_CKPT_WRITE_DELAY_S": "2"} if during_write else None
        before = scans(killed_cwd)
        proc = start(resume_args, killed_cwd, env)
        if during_write:  # kill while a *.tmp is being renamed into place: last, or the first of any
            tmp = "last.ckpt.tmp" if point % 2 else "*.tmp"
            hit = wait_for(lambda tmp=tmp: any(ckpts.glob(f"*/checkpoints/{tmp}")), proc)
        else:  # the run is past its start-up (it has scanned the data), then a random delay
            hit = wait_for(lambda before=before: scans(killed_cwd) > before, proc)
            time.sleep(rng.uniform(0, 0.8 * remaining(resume_args)))
        proc.send_signal(signal.SIGKILL)
        finish(proc)
        kills.append("during a checkpoint write" if during_write else "random")
        assert hit, "the run ended before it could be killed"
        all_checkpoints_complete(run_dir)

    final = run_train(resume_args, cwd=killed_cwd)
    assert final.returncode == 0, final.stderr[-3000:]
    compare(run_dir, reference, kills)


def compare(run_dir: Path, reference: Path, kills: list[str]) -> None:
    """Same metrics, bit for bit, and the same final weights as the uninterrupted run."""

    assert epoch_metrics(run_dir) == epoch_metrics(reference), kills
    assert len(epoch_metrics(run_dir)) == EPOCHS
    resumed, uninterrupted = weights(run_dir), weights(reference)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed), "weights differ"
    assert not list((run_dir / "checkpoints").glob("*.tmp"))


def test_resume_command_keeps_the_arguments_and_replaces_ckpt_path(tmp_path):
    argv = ["train.py", "data.root=/my photos", "ckpt_path=last", "lr=1e-3"]
    command = interrupts.resume_command(tmp_path / "run", argv)
    assert shlex.split(command) == [
        "python",
        "train.py",
        "data.root=/my photos",
        "lr=1e-3",
        f"ckpt_path={tmp_path / 'run'}",
    ]


def test_a_signal_to_the_whole_process_group_stops_with_a_checkpoint(data, tmp_path):
    """SLURM (time limit, scancel, preemption) and `kill -- -PGID` signal every process of the job,
    the loader workers too: they must leave the stop to the trainer, not die and take it down.
    (Every stop signal takes the same path in the workers: effnet.data.datamodule.STOP_SIGNALS.)"""
    stop = signal.SIGTERM
    args = [f"data.root={data}", *ARGS, "data.num_workers=1", "data.threads=1", "epochs=50"]
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN_PY), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its own process group, as a job step has
    )
    assert wait_for(
        lambda: (
            (tmp_path / "outputs").exists() and list(tmp_path.glob("outputs/train/*/checkpoints/last.ckpt"))
        ),
        proc,
    )
    os.killpg(proc.pid, stop)
    code, output = finish(proc)
    assert code == 128 + stop, output[-3000:]
    assert "Traceback" not in output and "killed by signal" not in output, output[-3000:]
    assert f"interrupted by {stop.name}" in output and "resume with:" in output
    assert find.is_complete(only_run(tmp_path) / "checkpoints" / "interrupted.ckpt")


def test_a_stop_during_a_long_first_step_is_honoured_within_seconds(data, tmp_path):
    """A first step that would run two minutes (huge images on a CPU; here the step-delay hook)
    does not hold SIGTERM: the watchdog abandons it STOP_GRACE_S later, with the resume line."""
    from tests.helpers import source_path

    args = [f"data.root={data}", "model=mobilenetv3_small", "model.pretrained=false", "image_size=32"]
    args += ["batch_size=4", "epochs=1", "data.num_workers=0", "trainer.accelerator=cpu"]
    env = {interrupts.STEP_DELAY_ENV: "120", "PYTHONPATH": source_path()}
    proc = start(args, tmp_path, env)
    runs = tmp_path / "outputs" / "train"
    wait_for(lambda: any(runs.glob("*/checkpoints/last.ckpt")), proc)  # written as training starts
    time.sleep(1)  # into the first step
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc, output = finish(proc, timeout=60)
    took = time.monotonic() - sent
    assert rc == 128 + signal.SIGTERM, output[-3000:]
    assert took < interrupts.STOP_GRACE_S + 5, took
    run_dir = only_run(tmp_path)
    (line,) = [ln for ln in output.splitlines() if ln.startswith("effnet: interrupted by SIGTERM")]
    assert line == (
        "effnet: interrupted by SIGTERM in epoch 1/1 (step 0); the step in progress had not ended 5 s later, "
        "so it was abandoned (no checkpoint of this moment); resume with: "
        f"{interrupts.resume_command(run_dir, [str(TRAIN_PY), *args])}  (continues from the start of epoch 1)"
    )
