"""DDP ranks started by effnet (trainer=ddp in a Hydra sweep) and by torchrun (two "nodes" on this
machine): real gloo process groups, a real Hydra multirun, a real torchrun rendezvous."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from effnet.report import write_report
from effnet.training import launch
from tests.helpers import CONF_DIR, FAST, TRAIN_PY, make_images, metric_rows, run_train

# train.py, except that in the job with lr=0.005 rank 1 raises in its first training step. The
# child rank runs this same script (its job, not the sweep), so the fault travels with it.
FAULTY_TRAIN_PY = f"""
from pathlib import Path
from effnet.training import module
from effnet.cli.app import main

step = module.ClassifierModule.training_step

def failing_step(self, batch, batch_idx):
    if self.global_rank == 1 and self.hparams.optimisation["lr"] == 5e-3:
        raise ValueError("disk quota exceeded on rank 1")
    return step(self, batch, batch_idx)

module.ClassifierModule.training_step = failing_step
main(config_dir=Path({str(CONF_DIR)!r}), config_name="train")
"""
SMALL = [*FAST, "model=mobilenetv3_small"]


@pytest.fixture(scope="module")
def ddp_sweep(tmp_path_factory) -> SimpleNamespace:
    """One 2-process DDP sweep of three jobs, the middle one failing on rank 1 (~75 s on 2 cores)."""
    cwd = tmp_path_factory.mktemp("ddp_sweep")
    data = make_images(cwd / "data", {"ant": 8, "bee": 8}, size=32)
    script = cwd / "faulty_train.py"
    script.write_text(FAULTY_TRAIN_PY)
    args = ["-m", f"data.root={data}", *SMALL, "trainer=ddp", "trainer.devices=2", "lr=1e-3,5e-3,3e-3"]
    result = run_train(
        [*args, "logger=[csv,wandb]"],
        cwd=cwd,
        script=script,
        timeout=600,
        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"},
    )
    sweeps = sorted((cwd / "outputs" / "multirun").iterdir())
    return SimpleNamespace(cwd=cwd, result=result, output=result.stdout + result.stderr, sweeps=sweeps)


def test_each_ddp_job_of_a_sweep_runs_once_in_its_own_folder(ddp_sweep):
    assert len(ddp_sweep.sweeps) == 1, f"a rank re-ran the sweep: {ddp_sweep.sweeps}"
    assert not (ddp_sweep.cwd / "outputs" / "train").exists()
    sweep = ddp_sweep.sweeps[0]
    for job in ("0", "2"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert (summary["devices"], summary["epochs_completed"]) == (2, 1)
        assert summary["run_dir"] == str(sweep / job)
        assert len(list((sweep / job / "wandb").glob("offline-run-*"))) == 1, "one W&B run per job"
        assert len(metric_rows(sweep / job, "val/acc")) == 1, "the epoch is logged once"
    for job in ("0", "1", "2"):
        assert sorted(p.name for p in (sweep / job).glob("*.log")) == ["train.log"]
        assert (sweep / job / ".hydra" / "overrides.yaml").is_file()


def test_a_failing_rank_fails_its_job_once_and_the_sweep_goes_on(ddp_sweep):
    assert ddp_sweep.result.returncode == 2, ddp_sweep.output[-3000:]
    job = ddp_sweep.sweeps[0] / "1"
    reason = (job / "error.txt").read_text()
    assert reason.startswith("rank 1 failed: ValueError: disk quota exceeded on rank 1"), reason
    assert (job / "failures" / "rank-1.txt").is_file() and not (job / "summary.json").exists()
    out = ddp_sweep.output
    assert len(re.findall(r"ERROR\] job 1 \(lr=0\.005\) failed", out)) == 1, out[-3000:]
    assert "effnet: error: job 1 (lr=0.005) failed: rank 1 failed" in ddp_sweep.result.stderr
    assert not [line for line in out.splitlines() if line.startswith("[rank1]") and "job " in line]
    for mentioned in re.findall(r"(/\S+/(?:train\.log|rank-\d\.txt))", out):
        assert Path(mentioned).is_file(), f"the output points at {mentioned}, which does not exist"


def test_the_sweep_report_ranks_the_finished_jobs_and_lists_the_failed_one(ddp_sweep):
    rows = write_report(ddp_sweep.sweeps[0])["rows"]
    assert [(row["rank"], row["job"]) for row in rows[:2]] in ([(1, "0"), (2, "2")], [(1, "2"), (2, "0")])
    assert rows[2]["job"] == "1" and rows[2]["status"].startswith("failed: rank 1 failed: ValueError")


def test_a_child_rank_runs_its_job_not_the_sweep():
    hydra_cfg = OmegaConf.create(
        {
            "runtime": {"cwd": "/home/me", "output_dir": "/home/me/outputs/multirun/t/1"},
            "job": {"name": "train"},
            "overrides": {
                "task": ["data.root=/data", "trainer=ddp", "lr=0.003"],
                "hydra": ["hydra.mode=MULTIRUN", "hydra.job.chdir=true", "hydra.run.dir=x"],
            },
        }
    )
    argv = ["train.py", "-m", "-cn", "train", "data.root=/data", "trainer=ddp", "lr=1e-3,3e-3"]
    command, cwd = launch.child_command(hydra_cfg, argv)
    assert cwd == "/home/me" and command[:2] == [sys.executable, "/home/me/train.py"]
    assert command[2:] == [
        "-cn",
        "train",
        "data.root=/data",
        "trainer=ddp",
        "lr=0.003",
        "hydra.job.chdir=true",
        'hydra.run.dir="/home/me/outputs/multirun/t/1"',
        "hydra.output_subdir=null",
        "hydra.mode=RUN",
        "hydra.job.name=train",
    ]
    module_command, _ = launch.child_command(hydra_cfg, ["x"], main_module="pkg.train")
    assert module_command[:3] == [sys.executable, "-m", "pkg.train"]


def test_ddp_strategies_get_the_process_group_timeout():
    ddp = launch.strategy("ddp", world_size=2, timeout_s=42)
    assert isinstance(ddp, launch.JobDDPStrategy) and ddp._timeout == timedelta(seconds=42)
    unused = launch.strategy("ddp_find_unused_parameters_true", world_size=2, timeout_s=42)
    assert unused._ddp_kwargs["find_unused_parameters"] is True
    assert isinstance(launch.strategy("auto", world_size=4, timeout_s=42), launch.JobDDPStrategy)
    assert launch.strategy("auto", world_size=1, timeout_s=42) == "auto"
    assert launch.strategy("fsdp", world_size=2, timeout_s=42) == "fsdp"


# torchrun: two "nodes" on one machine, each its own torchrun agent pinned to one core (as on two
# machines: each node's plan sees its own cores, not a share of one machine's two).


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(cwd: Path, args: list[str], name: str) -> list[subprocess.Popen]:
    """Two torchrun agents on one c10d rendezvous at 127.0.0.1, with no --rdzv-id (every such run
    has the id 'none'). Node 0 starts first, so it hosts the rendezvous store."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        str(TRAIN_PY),
        *args,
    ]
    nodes = []
    for n in range(2):
        with open(cwd / f"{name}-node{n}.out", "w") as out:
            nodes.append(
                subprocess.Popen(
                    command,
                    cwd=cwd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    preexec_fn=lambda n=n: os.sched_setaffinity(0, {n % os.cpu_count()}),
                )
            )
        time.sleep(1)
    return nodes


def run_folders(cwd: Path) -> set[Path]:
    root = cwd / "outputs" / "train"
    return set(root.iterdir()) if root.is_dir() else set()


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory) -> SimpleNamespace:
    """One 2-epoch run on two torchrun nodes (~35 s)."""
    cwd = tmp_path_factory.mktemp("torchrun")
    data = make_images(cwd / "data", {"ant": 8, "bee": 8}, size=32)
    args = [
        f"data.root={data}",
        *SMALL,
        "trainer=ddp",
        "trainer.num_nodes=2",
        "trainer.devices=1",
        "epochs=2",
    ]
    nodes = start_nodes(cwd, args, "run")
    codes = [node.wait(timeout=400) for node in nodes]
    return SimpleNamespace(cwd=cwd, data=data, args=args, codes=codes, folders=run_folders(cwd))


def test_two_torchrun_nodes_make_one_run(two_nodes):
    output = (two_nodes.cwd / "run-node0.out").read_text()
    assert two_nodes.codes == [0, 0], output[-3000:]
    (run_dir,) = two_nodes.folders  # both nodes, one folder
    # no --rdzv-id: a fresh name the ranks agreed on through torchrun's store, not "torchrun-none"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_[0-9a-f]{6}", run_dir.name), run_dir.name
    assert len(list(two_nodes.cwd.rglob("summary.json"))) == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["devices"], summary["epochs_completed"]) == (2, 2)
    assert [row["epoch"] for row in metric_rows(run_dir, "val/acc")] == ["0", "1"]
    assert sorted(p.name for p in run_dir.glob("*.log")) == ["train.log"]
    assert (run_dir / ".hydra" / "config.yaml").is_file()


def process_tree(pid: int) -> list[int]:
    """pid and its descendants: a torchrun agent and the workers it started (in sessions of their own)."""
    children = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(c) for c in (task / "children").read_text().split()]
    except OSError:  # gone
        return []
    return [pid] + [p for child in children for p in process_tree(child)]


def new_run_training(cwd: Path, before: set[Path]) -> bool:
    """A run folder that was not there before has its first last.ckpt: every rank has joined."""
    return any((d / "checkpoints" / "last.ckpt").exists() for d in run_folders(cwd) - before)


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_hung_node_ends_the_other_within_ddp_timeout_s(two_nodes):
    """Node 1 is frozen mid-training (SIGSTOP: its sockets stay open, as for a node that hangs or
    drops off the network, so nothing tells node 0 but the timeout). Node 0 must give up after
    trainer.ddp_timeout_s, not Lightning's 30 minutes. The bound adds 120 s for the teardown on a
    loaded 2-core machine (measured: exit 19 s after the freeze with a 15 s timeout)."""
    timeout_s = 15
    args = [*two_nodes.args, "epochs=1000", f"trainer.ddp_timeout_s={timeout_s}"]
    nodes = start_nodes(two_nodes.cwd, args, "hang")
    try:
        deadline = time.monotonic() + 300
        while not new_run_training(two_nodes.cwd, two_nodes.folders):
            assert time.monotonic() < deadline and nodes[0].poll() is None, "training did not start"
            time.sleep(0.2)
        time.sleep(2)  # into the training loop
        for pid in process_tree(nodes[1].pid):
            os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        code = nodes[0].wait(timeout=timeout_s + 120)
        took = time.monotonic() - stopped
    finally:  # the agents and their workers (which are not in the agents' process groups)
        kill_all([pid for node in nodes for pid in process_tree(node.pid)])
        for node in nodes:
            node.wait()
    output = (two_nodes.cwd / "hang-node0.out").read_text()
    assert code != 0 and took < timeout_s + 120, output[-3000:]
    assert f"effnet: error: rank 0 waited trainer.ddp_timeout_s={timeout_s} s for the other ranks" in output
    assert len(run_folders(two_nodes.cwd) - two_nodes.folders) == 1, "a second run gets a folder of its own"
