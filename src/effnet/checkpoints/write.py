"""Checkpoints that survive a kill at any instant.

Every checkpoint is written to `<name>.tmp`, fsynced and renamed into place, so a reader (or a
resumed run) sees the previous complete file or the new complete file, never half of one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from effnet import diskspace

TMP_SUFFIX = ".tmp"
# Test hook: seconds to wait between writing the temporary file and renaming it, so a test can
# kill the process while a write is in flight.
WRITE_DELAY_ENV = "EFFNET_CKPT_WRITE_DELAY_S"


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a power cut after os.replace could otherwise undo it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, written to a temporary file and renamed into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + TMP_SUFFIX)
        # a failed write leaves no .tmp (on a full disk it holds the space a resume needs), and
        # one for want of space is one line (diskspace.NoSpace), not torch's zip-writer error
        with diskspace.writing(path, "the checkpoint", needed=tensor_bytes(checkpoint), remove=[tmp]):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            if delay := float(os.environ.get(WRITE_DELAY_ENV, "0") or 0):
                time.sleep(delay)
            os.replace(tmp, path)
        _fsync_dir(path.parent)


def tensor_bytes(obj: Any) -> int:
    """The bytes of every tensor in a (nested) checkpoint: about the size of its file."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Half-written files from a killed write; the complete file they were replacing is intact."""
    stale = sorted(folder.glob(f"*{TMP_SUFFIX}")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
