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


def _zip(path):
    """Stands in for a torch checkpoint, which is a zip archive."""
    import zipfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data.pkl", b"x" * 100)
    return path


def test_checkpoint_lookup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="ckpt_path=last: no outputs/train/.*nor another complete"):
        runs.find_checkpoint("last")
    older = _zip(tmp_path / "outputs/train/a/checkpoints/last.ckpt")
    newer = _zip(tmp_path / "outputs/train/b/checkpoints/last.ckpt")
    import os

    os.utime(older, (1, 1))
    assert runs.find_checkpoint("last").resolve() == newer
    # the newest run's last.ckpt cut short: its best.ckpt is the newest complete checkpoint there
    best = _zip(newer.with_name("best.ckpt"))
    newer.write_bytes(newer.read_bytes()[:50])
    assert runs.find_checkpoint("last").resolve() == best
    best.write_bytes(b"")
    assert runs.find_checkpoint("last").resolve() == older
    with pytest.raises(UserError, match="truncated or not a checkpoint"):
        runs.find_checkpoint(str(newer))
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
