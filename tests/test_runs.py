import subprocess
import sys

from effnet import runs


def test_run_dirs_started_together_do_not_collide():
    code = "from effnet.runs import new_run_dir; print(new_run_dir(), new_run_dir())"
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
    assert runs.log_file("x/train.log") == "x/train.log" and runs.rank_zero_only(".hydra") == ".hydra"
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert runs.log_file("x/train.log") == "/dev/null" and runs.rank_zero_only(".hydra") is None
