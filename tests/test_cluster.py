"""External launchers: the job shape Lightning would refuse is one line before anything runs or is
submitted; hydra/launcher=slurm on the real single-node SLURM cluster (the slurm_cluster fixture):
a sweep of 2-process DDP jobs, one of which gets SLURM's time-limit warning, is requeued and resumes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from effnet import cluster
from effnet.errors import UserError
from effnet.report import write_report
from tests.helpers import CONF_DIR, FAST, make_images, metric_rows, one_error_line, run_train

SLURM_STEP = {"SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "4", "SLURM_NNODES": "2"}


@pytest.mark.parametrize(
    "env, devices, nodes, message",
    [
        (
            {**SLURM_STEP, "SLURM_NTASKS_PER_NODE": "2"},
            4,
            2,
            "trainer.devices=4 but the SLURM job runs 2 task",
        ),
        ({**SLURM_STEP, "SLURM_TASKS_PER_NODE": "2(x2)"}, 1, 2, "trainer.devices=1 but the SLURM job runs 2"),
        (
            {**SLURM_STEP, "SLURM_TASKS_PER_NODE": "2(x2)"},
            2,
            1,
            "trainer.num_nodes=1 but the SLURM job has 2",
        ),
        ({**SLURM_STEP, "SLURM_TASKS_PER_NODE": "2(x2)"}, 2, 2, None),
        ({**SLURM_STEP, "SLURM_JOB_NAME": "bash", "SLURM_NTASKS_PER_NODE": "2"}, 4, 1, None),  # a shell
        ({"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, 1, 2, "torchrun starts 2"),
        (
            {"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"},
            2,
            1,
            "!= torchrun's world",
        ),
        ({"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, 2, 2, None),
        ({}, 8, 3, None),  # no external launcher: Lightning starts the processes itself
    ],
)
def test_the_job_shape_is_checked_as_lightning_would(env, devices, nodes, message):
    if message is None:
        cluster.check_job_shape(devices, nodes, env)
    else:
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            cluster.check_job_shape(devices, nodes, env)


def test_inside_srun_a_shape_lightning_refuses_is_one_line(flat_folder, tmp_path):
    env = {**SLURM_STEP, "SLURM_NTASKS": "2", "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "2"}
    result = run_train([f"data.root={flat_folder}", "trainer.devices=1"], cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert one_error_line(result).startswith("trainer.devices=1 but the SLURM job runs 2 task(s) per node")


def launcher_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["data.root=/data", "hydra/launcher=slurm", *overrides],
            return_hydra_config=True,
        )
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_the_slurm_preset_asks_for_one_task_per_device_and_sigusr1():
    launcher = launcher_config("trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2")
    assert launcher["_target_"] == cluster.SLURM_LAUNCHER
    assert (launcher["tasks_per_node"], launcher["nodes"], launcher["gpus_per_node"]) == (4, 2, 4)
    assert launcher["cpus_per_task"] == 9  # data.num_workers=auto: up to 8 loader workers + training
    assert launcher["additional_parameters"] == {"signal": "USR1@120", "requeue": True}
    assert launcher["max_num_timeout"] == 0  # submitit's own USR2 requeue stays off: effnet requeues
    cpu = launcher_config("trainer.accelerator=cpu", "data.num_workers=0", "hydra.launcher.signal_delay_s=90")
    assert (cpu["tasks_per_node"], cpu["gpus_per_node"], cpu["cpus_per_task"]) == (1, None, 1)
    assert cpu["additional_parameters"]["signal"] == "USR1@90"


SUBMIT_CASES = [
    (
        ["trainer=ddp", "trainer.devices=2", "hydra.launcher.tasks_per_node=1"],
        "hydra.launcher.tasks_per_node=1 but trainer.devices=2: Lightning runs one SLURM task per device",
    ),
    (["trainer.num_nodes=2", "hydra.launcher.nodes=1"], "hydra.launcher.nodes=1 but trainer.num_nodes=2"),
    (["trainer=ddp"], "trainer.devices=auto: hydra/launcher=slurm needs a number of devices per node"),
    (["trainer.devices=1,2"], "trainer.devices is swept, but hydra/launcher=slurm submits the sweep as one"),
]


@pytest.mark.parametrize("args, message", SUBMIT_CASES, ids=[" ".join(a) for a, _ in SUBMIT_CASES])
def test_a_slurm_launch_lightning_would_refuse_is_one_line_and_submits_nothing(args, message, tmp_path):
    result = run_train(["-m", "hydra/launcher=slurm", "data=demo", *args], cwd=tmp_path)
    assert result.returncode == 2
    assert one_error_line(result).startswith(message)
    assert list(tmp_path.iterdir()) == [], "nothing written, nothing submitted"


# The real cluster. train.py with a training step that takes STEP_S more seconds in job 0's first
# run (lr=1e-3), so that a signal sent after its first epoch lands in the middle of training; job 1
# and job 0's resumed run train at full speed (nothing is signalled there). The task function is
# defined in __main__, so submitit's cloudpickle carries it (and the slower step) into the SLURM jobs.
STEP_S = 0.7
SLOW_TRAIN_PY = f"""
import os
import time
from pathlib import Path

from effnet.cli.app import main, train_task


def slow_task(cfg):
    from effnet.training import module

    if cfg.lr != 1e-3 or os.environ.get("SLURM_RESTART_COUNT"):
        return train_task(cfg)

    step = module.ClassifierModule.training_step

    def slow_step(self, batch, batch_idx):
        time.sleep({STEP_S})
        return step(self, batch, batch_idx)

    module.ClassifierModule.training_step = slow_step
    return train_task(cfg)


main(config_dir=Path({str(CONF_DIR)!r}), config_name="train", task=slow_task)
"""


def first_epoch_done(run_dir: Path) -> bool:
    try:
        with open(run_dir / "metrics.csv") as f:
            return any(row.get("val/acc") and row["epoch"] == "0" for row in csv.DictReader(f))
    except OSError:
        return False


@pytest.fixture(scope="module")
def slurm_sweep(slurm_cluster, tmp_path_factory) -> SimpleNamespace:
    """Two 2-task DDP jobs through hydra/launcher=slurm, one after the other on the 2-CPU node. Job 0
    gets SIGUSR1 (what `--signal=USR1@120` sends before the time limit) once its first epoch is
    logged, with `scancel --signal`, which SLURM delivers at once: the time-limit warning itself
    comes on a 30 s tick, up to a minute early (scripts/SLURM-NOTES.md). ~75 s on 2 loaded cores."""
    cwd = tmp_path_factory.mktemp("slurm_sweep")
    data = make_images(cwd / "data", {"ant": 8, "bee": 8}, size=32)
    (cwd / "slow_train.py").write_text(SLOW_TRAIN_PY)
    sweep = cwd / "sweep"
    args = ["-m", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}", f"data.root={data}", *FAST]
    args += ["model=mobilenetv3_small", "trainer=ddp", "trainer.devices=2", "epochs=3", "lr=1e-3,3e-3"]
    started, array = time.monotonic(), None
    with open(cwd / "sweep.out", "w") as out:
        launcher = subprocess.Popen(
            [sys.executable, "slow_train.py", *args],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        while not first_epoch_done(sweep / "0"):
            assert launcher.poll() is None, (cwd / "sweep.out").read_text()[-3000:]
            assert time.monotonic() - started < 300, "job 0 did not finish an epoch in 300 s"
            time.sleep(0.1)
        array = next(d.name for d in (sweep / ".submitit").iterdir() if d.name.isdigit())
        signalled = time.monotonic() - started
        subprocess.run(["scancel", "--signal=USR1", f"{array}_0"], check=True, timeout=60)
        code = launcher.wait(timeout=480)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        if array is not None:  # whatever is left of the jobs it submitted
            subprocess.run(["scancel", array], check=False)
    return SimpleNamespace(
        sweep=sweep,
        array=array,
        code=code,
        output=(cwd / "sweep.out").read_text(),
        signalled_s=round(signalled, 1),
        wall_s=round(time.monotonic() - started, 1),
    )


def test_a_slurm_sweep_of_ddp_jobs_completes_with_two_summaries(slurm_sweep):
    assert slurm_sweep.code == 0, slurm_sweep.output[-3000:]
    submission = next(
        (slurm_sweep.sweep / ".submitit" / slurm_sweep.array).glob("*_submission.sh")
    ).read_text()
    for line in ("--ntasks-per-node=2", "--nodes=1", "--cpus-per-task=1", "--signal=USR1@120", "--requeue"):
        assert f"#SBATCH {line}\n" in submission, submission
    for job in ("0", "1"):
        summary = json.loads((slurm_sweep.sweep / job / "summary.json").read_text())
        assert (summary["devices"], summary["epochs_completed"]) == (2, 3)
    ranked = [row for row in write_report(slurm_sweep.sweep)["rows"] if row["rank"]]
    assert sorted(row["job"] for row in ranked) == ["0", "1"], "the report ranks both"
    print(f"signal at {slurm_sweep.signalled_s} s, sweep done in {slurm_sweep.wall_s} s")


def test_the_signalled_job_is_requeued_and_resumes_in_its_own_folder(slurm_sweep):
    job = slurm_sweep.sweep / "0"
    stderr = slurm_sweep.sweep / ".submitit" / f"{slurm_sweep.array}_0" / f"{slurm_sweep.array}_0_0_log.err"
    assert f"requeueing SLURM job {slurm_sweep.array}_0: it starts again in {job}" in stderr.read_text()
    assert (job / "checkpoints" / "interrupted.ckpt").is_file()
    log = (job / "train.log").read_text()
    assert f"SLURM restarted this job (requeued): resuming the run in {job}" in log
    assert f"resuming from {job / 'checkpoints' / 'last.ckpt'} at the start of epoch" in log
    summary = json.loads((job / "summary.json").read_text())
    assert summary["resumed_from"] == str(job / "checkpoints" / "last.ckpt")
    # every epoch once: the one cut short is replayed, its first rows dropped
    assert [row["epoch"] for row in metric_rows(job, "val/acc")] == ["0", "1", "2"]
    assert [row["epoch"] for row in metric_rows(job, "train/loss_epoch")] == ["0", "1", "2"]
    assert "SLURM restarted" not in (slurm_sweep.sweep / "1" / "train.log").read_text()
