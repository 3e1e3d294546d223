"""Writes that fail for want of space: one line saying what could not be written, where, how much
it needed and what was kept, instead of a traceback ending in torch's zip writer.

A full disk (ENOSPC), a full quota (EDQUOT) and a read-only file system (EROFS) are the user's
to fix, not bugs. torch.save reports a failed write as `RuntimeError: [enforce fail at
inline_container.cc] unexpected pos`, the errno lost (or only in __context__), so a failure of a
write whose file system has (almost) no space left counts too. Imports no torch.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from effnet.errors import UserError

REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
}
# Below this much free space a failed write is taken as a full disk: a write that ran out of
# space filled the file system to within a block.
NEARLY_FULL = 1 << 20


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int | None:
    """Space an unprivileged write may still take on the file system holding `path`."""
    try:
        st = os.statvfs(_existing(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def mount_point(path: Path) -> Path:
    path = _existing(path)
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def size_text(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def no_space(exc: BaseException, path: Path | None = None) -> int | None:
    """The errno (ENOSPC, EDQUOT, EROFS) when `exc` is a write that failed for want of space, else
    None. `path`: where the failed write went, to check for torch's errno-less RuntimeError.
    Call it before the half-written file is removed: that file is what filled the disk."""
    for err in _chain(exc):
        if isinstance(err, NoSpace):
            return err.code
        if isinstance(err, OSError) and err.errno in REASONS:
            return err.errno
    if path is not None and isinstance(exc, RuntimeError | OSError):
        free = free_bytes(path)
        if free is not None and free < NEARLY_FULL:
            return errno.ENOSPC
    return None


class NoSpace(UserError):
    """A write that failed for want of space; printed as one line, exit status 2.

    `kept` says what the failure left intact (the last good checkpoint, the previous bundle),
    added by whoever knows it (effnet.training.train for a training run)."""

    def __init__(
        self, what: str, path: Path, code: int, needed: int | None = None, kept: str | None = None
    ) -> None:
        self.what, self.path, self.code, self.needed, self.kept = what, Path(path), code, needed, kept
        self.free = free_bytes(self.path)
        super().__init__(self.message())

    def message(self) -> str:
        where = mount_point(self.path)
        room = []
        if self.free is not None and self.code != errno.EROFS:
            room.append(f"{where} has {size_text(self.free)} free")
        if self.needed:
            room.append(f"it needs ~{size_text(self.needed)}")
        elif self.code == errno.EROFS:
            room.append(f"{where} is mounted read-only")
        detail = f" ({', '.join(room)})" if room else ""
        what = f"{self.what} " if self.what else ""
        line = f"could not write {what}{self.path}: {REASONS[self.code]}{detail}"
        return line + (f"; {self.kept}" if self.kept else "")

    def keeping(self, kept: str) -> NoSpace:
        """The same failure, saying what was kept."""
        return NoSpace(self.what, self.path, self.code, self.needed, kept)

    @classmethod
    def of(cls, exc: BaseException, path: Path | None = None, what: str = "") -> NoSpace | None:
        """`exc` as a NoSpace when it is one (in its chain, or an OSError for want of space), else None."""
        for err in _chain(exc):
            if isinstance(err, NoSpace):
                return err
        code = no_space(exc, path)
        if code is None:
            return None
        filename = next((e.filename for e in _chain(exc) if isinstance(e, OSError) and e.filename), None)
        target = path or (Path(os.fsdecode(filename)) if filename is not None else Path.cwd())
        return cls(what, target, code)


@contextlib.contextmanager
def writing(
    path: Path,
    what: str = "",
    needed: int | None = None,
    kept: str | None = None,
    remove: Iterable[Path] = (),
):
    """Around a write to `path`: on any failure the `remove` paths (its temporary file or folder)
    are deleted, so nothing half-written stays on a full disk; a failure for want of space becomes
    NoSpace, naming `what` and `needed` bytes."""
    try:
        yield
    except BaseException as exc:
        code = no_space(exc, path) if isinstance(exc, Exception) else None  # before the cleanup frees space
        for leftover in remove:
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):  # e.g. nothing to remove on a read-only mount
                    leftover.unlink(missing_ok=True)
        if code is None or isinstance(exc, NoSpace):
            raise
        raise NoSpace(what, path, code, needed, kept) from exc
