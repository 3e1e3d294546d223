"""Atomic checkpoint writes: a write that dies leaves the previous file whole."""

import pytest
import torch

from effnet.checkpoints import find, write


def test_a_write_that_dies_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    io = write.AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def dies_halfway(obj, file):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # what a Ctrl-C or a kill does mid-write

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert find.is_complete(path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    # the failed write removed its own .tmp (a SIGKILL cannot: remove_stale_temporaries is for that)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert write.remove_stale_temporaries(tmp_path) == []


def test_a_temporary_left_by_a_killed_write_is_removed_at_the_next_start(tmp_path):
    """SIGKILL mid-write leaves <name>.tmp; the next start removes it and keeps the checkpoint."""
    write.AtomicCheckpointIO().save_checkpoint({"epoch": 1}, tmp_path / "last.ckpt")
    (tmp_path / "last.ckpt.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")
    assert write.remove_stale_temporaries(tmp_path) == [tmp_path / "last.ckpt.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
