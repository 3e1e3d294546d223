import subprocess
import sys

import pytest

from effnet import runs
from effnet.errors import UserError


def test_run_dirs_started_together_do_not_collide():
    code = "from effnet.runs import new_run_dir; print(new_run_dir(), new_run_dir())"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)
    ]
    names = [p.communicate()[0].split() for p in procs]
    assert all(a == b for a, b in names), "stable within a process"
    assert len({a for a, _ in names}) == 3, "unique across processes"
    assert all(a.startswith("outputs/train/") for a, _ in names)


def test_checkpoint_lookup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="ckpt_path=last: no outputs/train"):
        runs.find_checkpoint("last")
    older = tmp_path / "outputs/train/a/checkpoints/last.ckpt"
    newer = tmp_path / "outputs/train/b/checkpoints/last.ckpt"
    for path in (older, newer):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    import os

    os.utime(older, (1, 1))
    assert runs.find_checkpoint("last").resolve() == newer
    assert runs.find_checkpoint(str(tmp_path / "outputs/train/a")) == older
    assert runs.run_dir_of(older) == tmp_path / "outputs/train/a"
    assert runs.run_dir_for(str(older)) == str(tmp_path / "outputs/train/a")
    with pytest.raises(UserError, match="no checkpoint at"):
        runs.find_checkpoint(str(tmp_path / "nothing.ckpt"))


def test_only_rank_zero_writes(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert runs.log_file("x/train.log") == "x/train.log" and runs.rank_zero_only(".hydra") == ".hydra"
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert runs.log_file("x/train.log") == "/dev/null" and runs.rank_zero_only(".hydra") is None
