"""Files written so that a reader (a resumed run, a sweep report, a W&B upload) never sees half of one.

Each write goes to a temporary file named after this process and is renamed into place: a rename is
atomic, and two processes writing the same file (ranks, sweep jobs sharing a scan cache) never
write into each other's temporary file.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

from effnet import diskspace


def temporary(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def write_text(path: Path, text: str) -> Path:
    path = Path(path)
    tmp = temporary(path)
    with diskspace.writing(path, needed=len(text.encode()), remove=[tmp]):  # no .tmp left on a full disk
        tmp.write_text(text)
        tmp.replace(path)
    return path


def write_json(path: Path, data, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(data, indent=indent, default=str))


def csv_text(rows: Sequence[dict], fields: Sequence[str] | None = None, lineterminator: str = "\r\n") -> str:
    """csv's own dialect (CRLF, as in Lightning's metrics.csv); lineterminator="\n" for a terminal."""
    buffer = io.StringIO()
    header = list(fields if fields is not None else rows[0] if rows else [])
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator=lineterminator)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: Path, rows: Sequence[dict], fields: Sequence[str] | None = None) -> Path:
    """Rows of dicts as CSV; `fields` when the header is not the first row's keys."""
    return write_text(path, csv_text(rows, fields))


# ---------------------------------------------------------------------------------------------
# Whole folders: built aside, then swapped in (an export bundle is several files that belong together)

_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system or the
    file system cannot, and the caller falls back to two renames."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_cwd = -100  # AT_FDCWD
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # e.g. an old kernel, a FUSE mount
        return False
    raise OSError(err, os.strerror(err), str(b))


def staging_folder(target: Path) -> Path:
    """An empty hidden folder beside `target` (same file system: the swap is a rename) to build
    its replacement in. Staging folders of processes that are gone (killed) are removed first."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.staging-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    folder = target.with_name(f".{target.name}.staging-{os.getpid()}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def replace_folder(new: Path, target: Path) -> None:
    """Put the folder `new` where `target` is, so that a reader sees the old folder or the new
    one, whole, at every instant; the old one is deleted afterwards. Where the swap cannot be one
    step, the two renames run with SIGINT/SIGTERM held back, so a stop signal cannot fall between."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new)  # now the old folder
        return
    old = target.with_name(f".{target.name}.staging-old-{os.getpid()}")
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        os.rename(target, old)
        os.rename(new, target)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    shutil.rmtree(old)
