"""Finding checkpoints: one rule for best versus last, only complete files, one line otherwise."""

import os
import zipfile

import pytest

from effnet import run_names
from effnet.checkpoints import find
from effnet.errors import UserError


def _zip(path):
    """Stands in for a torch checkpoint, which is a zip archive."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data.pkl", b"x" * 100)
    return path


def test_a_model_is_best_and_a_resume_is_last(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    best, last = _zip(folder / "best.ckpt"), _zip(folder / "last.ckpt")
    _zip(folder / "interrupted.ckpt")
    assert find.in_folder(folder, "model") == best
    assert find.in_folder(folder, "resume") == last
    assert find.locate(str(tmp_path / "run"), "model", "ckpt") == best, "a run folder"
    assert find.locate(str(folder), "resume", "ckpt_path") == last, "its checkpoints/ folder"
    best.write_bytes(best.read_bytes()[:40])  # cut short: skipped, whatever it is called
    assert find.in_folder(folder, "model") == last
    last.unlink()
    assert find.in_folder(folder, "resume") is None, "interrupted.ckpt is never picked"


def test_last_is_the_newest_run_with_a_complete_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="ckpt_path=last: no complete checkpoint under outputs/train"):
        find.locate("last", "resume", "ckpt_path")
    older = _zip(tmp_path / "outputs/train/a/checkpoints/last.ckpt")
    newer = _zip(tmp_path / "outputs/train/b/checkpoints/last.ckpt")
    os.utime(older, (1, 1))
    assert find.locate("last", "resume", "ckpt_path").resolve() == newer
    # the newest run's last.ckpt cut short: its best.ckpt is the newest complete checkpoint there
    best = _zip(newer.with_name("best.ckpt"))
    newer.write_bytes(newer.read_bytes()[:50])
    assert find.locate("last", "resume", "ckpt_path").resolve() == best
    best.write_bytes(b"")
    assert find.locate("last", "resume", "ckpt_path").resolve() == older
    with pytest.raises(UserError, match="truncated or not a checkpoint"):
        find.locate(str(newer), "resume", "ckpt_path")
    assert find.run_dir_of(older) == tmp_path / "outputs/train/a"
    assert run_names.run_dir_for(str(older)) == str(tmp_path / "outputs/train/a")
    with pytest.raises(UserError, match=r"ckpt=.*nothing.ckpt: not found; pass a .ckpt file"):
        find.locate(str(tmp_path / "nothing.ckpt"), "model", "ckpt")
    with pytest.raises(UserError, match="no complete checkpoint in"):
        find.locate(str(tmp_path / "outputs"), "model", "ckpt")
