"""Finding checkpoints, with one rule for best versus last.

A run folder holds `checkpoints/best.ckpt` (the epoch validation scored highest) and
`checkpoints/last.ckpt` (the state at the end of the latest epoch, written at the start too).
- To use a model (eval, predict, export) take best, else last: the weights validation picked.
- To resume training take last: where the run stopped.
Either way only complete files count, and when the preferred ones are missing or damaged the
newest complete epoch-end checkpoint of the folder is used. interrupted.ckpt (weights at the step
a signal arrived) is never picked for either: pass it by name.
Imports no torch.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Literal

from effnet.errors import UserError

CHECKPOINTS = "checkpoints"
BEST = "best.ckpt"
LAST = "last.ckpt"
INTERRUPTED = "interrupted.ckpt"  # mid-epoch weights written on a signal; not a resume point
RUNS_ROOT = Path("outputs") / "train"

Purpose = Literal["model", "resume"]
PREFERRED: dict[str, tuple[str, ...]] = {"model": (BEST, LAST), "resume": (LAST,)}

log = logging.getLogger("effnet")


def is_complete(path: Path) -> bool:
    """A torch checkpoint is a zip archive; a truncated one lacks the end-of-archive record."""
    try:
        return path.is_file() and path.stat().st_size > 0 and zipfile.is_zipfile(path)
    except OSError:
        return False


def in_folder(folder: Path, purpose: Purpose) -> Path | None:
    """The checkpoint of a checkpoints/ folder to use for `purpose` (see the module docstring)."""
    for name in PREFERRED[purpose]:
        if is_complete(folder / name):
            return folder / name
    others = [p for p in folder.glob("*.ckpt") if p.name != INTERRUPTED and is_complete(p)]
    if not others:
        return None
    newest = max(others, key=lambda p: p.stat().st_mtime)
    log.warning("%s: no complete %s; using %s", folder, " or ".join(PREFERRED[purpose]), newest.name)
    return newest


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (its parent, or above checkpoints/)."""
    parent = checkpoint.parent
    return parent.parent if parent.name == CHECKPOINTS else parent


def newest_run_checkpoint(purpose: Purpose, runs_root: Path = RUNS_ROOT) -> Path | None:
    """`last`: the newest run (by its newest checkpoint) under outputs/train that has a usable one."""
    folders = sorted(
        {p.parent for p in runs_root.glob(f"*/{CHECKPOINTS}/*.ckpt")},
        key=lambda f: max(c.stat().st_mtime for c in f.glob("*.ckpt")),
        reverse=True,
    )
    return next((found for f in folders if (found := in_folder(f, purpose))), None)


def locate(value: str, purpose: Purpose, key: str) -> Path:
    """A checkpoint from what the user typed: `last`, a run folder or a .ckpt file.
    Every failure is one line naming `key`, the value and what is accepted."""
    accepted = "pass a .ckpt file, a training run folder or 'last'"
    if value == "last":
        found = newest_run_checkpoint(purpose)
        if found is None:
            raise UserError(
                f"{key}=last: no complete checkpoint under {RUNS_ROOT}/*/{CHECKPOINTS}/ in {Path.cwd()}"
            )
        return found
    path = Path(value).expanduser()
    if path.is_dir():
        folder = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
        found = in_folder(folder, purpose)
        if found is None:
            raise UserError(f"{key}={value}: no complete checkpoint in {folder}; {accepted}")
        return found
    if not path.is_file():
        raise UserError(f"{key}={value}: not found; {accepted}")
    if not is_complete(path):
        raise UserError(
            f"{key}={value}: truncated or not a checkpoint; pass its run folder to use the newest complete one"
        )
    return path
