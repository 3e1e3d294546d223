"""A full disk (or quota, or read-only mount) is one line naming what could not be written, where,
and how much it needed; nothing half-written stays behind. Real small tmpfs mounts, no mocks:
the errors come from torch's zip writer, Pillow, numpy and the kernel as a user meets them."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from effnet import diskspace, files, plots
from effnet.checkpoints.write import AtomicCheckpointIO
from effnet.errors import one_line

MB = 1 << 20


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or "staging" in p.name)


def test_a_checkpoint_that_does_not_fit_is_one_line_and_leaves_no_tmp(small_disk):
    disk = small_disk(4 * MB)
    path = disk / "checkpoints" / "last.ckpt"
    with pytest.raises(diskspace.NoSpace) as raised:
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(2_000_000)}, path)  # 8 MB
    assert str(raised.value) == (
        f"could not write the checkpoint {path}: no space left on device "
        f"({disk} has {diskspace.size_text(diskspace.free_bytes(disk))} free, it needs ~8.0 MB)"
    )
    assert isinstance(raised.value.__cause__, RuntimeError | OSError)  # torch's zip writer, or the write
    assert _leftovers(disk) == [] and not path.exists()
    assert diskspace.free_bytes(disk) > 3 * MB, "the half-written file is gone: its space is free again"
    AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(100_000)}, path)  # what fits still does
    assert torch.load(path, weights_only=True)["w"].shape == (100_000,)


def test_torchs_errno_less_error_counts_when_the_disk_is_full(small_disk):
    """torch.save may say only `unexpected pos`: the free space of the file system decides."""
    disk = small_disk(1 * MB)
    zip_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 6480512 vs 6480400")
    assert diskspace.no_space(zip_error, disk) is None  # room left: a bug, kept as a traceback
    (disk / "ballast").write_bytes(bytes(diskspace.free_bytes(disk) - 4096))
    assert diskspace.no_space(zip_error, disk) == errno.ENOSPC
    assert diskspace.no_space(RuntimeError("unexpected pos"), None) is None  # no path: no guess


def test_records_figures_and_the_cache_store_on_a_full_disk(small_disk, tmp_path):
    disk = small_disk(1 * MB)
    with pytest.raises(
        diskspace.NoSpace, match=rf"could not write {disk}/summary.json: no space left on device"
    ):
        files.write_json(disk / "summary.json", {"x": "y" * (2 * MB)})
    ballast = disk / "ballast"  # another program's file, leaving 8 kB: less than any figure
    ballast.write_bytes(bytes(diskspace.free_bytes(disk) - 8192))
    with pytest.raises(diskspace.NoSpace, match=rf"could not write the figure {disk}/cm.png: no space left"):
        plots.confusion_matrix_png(np.eye(3, dtype=int), ["a", "b", "c"], disk / "cm.png")
    ballast.unlink()
    assert _leftovers(disk) == []

    from effnet.data.cache import disk_store
    from tests.helpers import make_images

    root = make_images(tmp_path / "data", {"a": 3}, size=400)
    paths = [str(p) for p in sorted((root / "a").iterdir())]
    with pytest.raises(diskspace.NoSpace) as raised:
        disk_store(paths, 400, str(root), directory=disk)  # 3 x 400 x 400 x 3 = 1.4 MB: more than the disk
    assert str(raised.value).startswith(f"could not write the data.cache=disk store {disk}/images-")
    assert "it needs ~1.4 MB" in str(raised.value)
    (store,) = disk.glob("images-*.u8")
    assert store.stat().st_size == 0 and store.stat().st_blocks == 0, "given back, not left half-allocated"


def test_a_read_only_mount_and_a_full_disk_anywhere_are_one_line(small_disk):
    read_only = small_disk(1 * MB, read_only=True)
    with pytest.raises(
        diskspace.NoSpace, match=rf"could not write {read_only}/a.json: read-only file system"
    ):
        files.write_json(read_only / "a.json", {})
    # wherever a write fails for want of space, the one line says so (here: Hydra's, a logger's)
    raised = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(read_only / "train.log"))
    try:
        raise RuntimeError("a library's own wrapper") from raised
    except RuntimeError as wrapped:
        assert one_line(wrapped).startswith(f"could not write {read_only}/train.log: no space left on device")
    quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/home/me/run/x")
    assert one_line(quota).startswith("could not write /home/me/run/x: disk quota exceeded")
    assert one_line(OSError(errno.EACCES, "Permission denied", "/x")) is None  # not a space problem


def test_a_run_that_fills_its_disk_keeps_its_checkpoint_and_resumes_exactly(
    trained_run, small_disk, tmp_path, monkeypatch
):
    """The disk fills while epoch 1's last.ckpt is written: one line naming it, the space it
    needed and the checkpoint kept; no .tmp; after space is freed, the resume ends where the
    uninterrupted run (the shared trained_run, same data and settings) ended."""
    import csv
    import subprocess

    from tests.helpers import TINY, compose_cfg, start_and_run

    monkeypatch.chdir(tmp_path)  # the scan cache
    full = (trained_run / "checkpoints" / "best.ckpt").stat().st_size
    # room for the start-of-run last.ckpt (no optimizer state yet: about a third) and epoch 1's
    # best.ckpt, not for epoch 1's last.ckpt beside them
    disk = small_disk(int(full * 1.6))
    run_dir, data = disk / "run", trained_run.parent / "data"
    with pytest.raises(diskspace.NoSpace) as raised:
        start_and_run(compose_cfg([f"data.root={data}", *TINY]), run_dir)
    line = one_line(raised.value)
    assert line.startswith(
        f"could not write the checkpoint {run_dir}/checkpoints/last.ckpt: no space left on device ({disk} has "
    )
    assert f"free, it needs ~{diskspace.size_text(full)[:-4]}" in line  # ~18.5 MB for a file of 18.52 MB
    assert line.endswith(f"ckpt_path={run_dir}")
    assert (
        f"; the last good checkpoint is kept ({run_dir}/checkpoints/last.ckpt, resuming at the start of epoch 1): "
        "free some space, then resume with: python " in line
    )
    assert _leftovers(disk) == []

    subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)  # space freed
    start_and_run(compose_cfg([f"data.root={data}", *TINY, f"ckpt_path={run_dir}"]), run_dir)

    def metrics(folder: Path) -> list[tuple]:
        with open(folder / "metrics.csv") as f:
            keys = ("epoch", "step", "train/loss_epoch", "train/acc", "val/loss", "val/acc")
            return [tuple(row[k] for k in keys) for row in csv.DictReader(f)]

    assert metrics(run_dir) == metrics(trained_run)
