import subprocess
import sys

import pytest

from effnet import run_names
from effnet.errors import UserError


def test_run_dirs_started_together_do_not_collide():
    code = "from effnet.run_names import new_run_dir; print(new_run_dir(), new_run_dir())"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)
    ]
    names = [p.communicate()[0].split() for p in procs]
    assert all(a == b for a, b in names), "stable within a process"
    assert len({a for a, _ in names}) == 3, "unique across processes"
    assert all(a.startswith("outputs/train/") for a, _ in names)


def test_only_rank_zero_writes(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert (
        run_names.log_file("x/train.log") == "x/train.log" and run_names.rank_zero_only(".hydra") == ".hydra"
    )
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert run_names.log_file("x/train.log") == "/dev/null" and run_names.rank_zero_only(".hydra") is None


def test_ranks_of_external_launchers_name_the_folder_alike(monkeypatch):
    for var in (
        "TORCHELASTIC_RUN_ID",
        "SLURM_JOB_ID",
        "WORLD_SIZE",
        "SLURM_NTASKS",
        "TORCHELASTIC_USE_AGENT_STORE",
    ):
        monkeypatch.delenv(var, raising=False)
    fresh = run_names.new_run_dir.__wrapped__
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    assert fresh().startswith("outputs/train/20"), "one SLURM task: a run of its own"
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert fresh() == "outputs/train/slurm-41"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-41")  # torchrun --rdzv-id=job-41
    assert fresh() == "outputs/train/torchrun-job-41"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # no --rdzv-id: shared by every run
    with pytest.raises(UserError, match="torchrun without --rdzv-id: pass a unique --rdzv-id"):
        fresh()  # (with torchrun's agent store the ranks agree on a name: tests/training/test_launch.py)
