"""Run folders: a fresh one per run, or the folder of the run being resumed.

Every run lives in outputs/train/<timestamp>_<suffix>/ with its checkpoints in checkpoints/.
The suffix keeps two runs started in the same second apart; external launchers (torchrun, SLURM)
start every rank as its own process, so there the name comes from the job id all ranks share.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import time
import zipfile
from pathlib import Path

from effnet.errors import UserError

RUNS_ROOT = Path("outputs") / "train"
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
INTERRUPTED = "interrupted.ckpt"  # mid-epoch weights written on a signal; not a resume point

log = logging.getLogger("effnet")


def global_rank() -> int:
    """This process's rank as the launchers announce it (0 when not distributed)."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


@functools.cache
def new_run_dir() -> str:
    """Cached: Hydra and Lightning's DDP launcher both resolve the run dir, and must agree."""
    for var, prefix in (("TORCHELASTIC_RUN_ID", "torchrun"), ("SLURM_JOB_ID", "slurm")):
        if os.environ.get(var) and int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))) > 1:
            return str(RUNS_ROOT / f"{prefix}-{os.environ[var]}")
    return str(RUNS_ROOT / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{secrets.token_hex(3)}")


def is_complete(path: Path) -> bool:
    """A torch checkpoint is a zip archive; a truncated one lacks the end-of-archive record."""
    try:
        return path.is_file() and path.stat().st_size > 0 and zipfile.is_zipfile(path)
    except OSError:
        return False


def newest_complete(folder: Path) -> Path | None:
    """folder/last.ckpt when it is whole, else the newest whole epoch-end checkpoint there.

    Checkpoints are written atomically (effnet.checkpoints), so this fallback only matters for
    files written by something else, or damaged afterwards.
    """
    last = folder / LAST
    if is_complete(last):
        return last
    others = [p for p in folder.glob("*.ckpt") if p.name not in (LAST, INTERRUPTED) and is_complete(p)]
    if not others:
        return None
    newest = max(others, key=lambda p: p.stat().st_mtime)
    log.warning("%s is missing or incomplete: resuming from %s", last, newest)
    return newest


def find_checkpoint(ckpt_path: str) -> Path:
    """`last` = the newest run's newest complete checkpoint; a run folder = its newest complete
    checkpoint; else the file itself."""
    if ckpt_path == "last":
        folders = sorted(
            (p.parent for p in RUNS_ROOT.glob(f"*/{CHECKPOINTS}/*.ckpt")),
            key=lambda f: max(c.stat().st_mtime for c in f.glob("*.ckpt")),
            reverse=True,
        )
        for folder in dict.fromkeys(folders):
            if found := newest_complete(folder):
                return found
        raise UserError(
            f"ckpt_path=last: no {RUNS_ROOT}/*/{CHECKPOINTS}/{LAST} (nor another complete checkpoint) "
            f"to resume from in {Path.cwd()}"
        )
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        folder = path / CHECKPOINTS
        found = newest_complete(folder) if folder.is_dir() else None
        if found is None:
            raise UserError(
                f"ckpt_path={ckpt_path}: no complete checkpoint in {folder}; pass a .ckpt file, a run folder or 'last'"
            )
        return found
    if not path.is_file():
        raise UserError(
            f"ckpt_path={ckpt_path}: no checkpoint at {path}; pass a .ckpt file, a run folder or 'last'"
        )
    if not is_complete(path):
        raise UserError(
            f"ckpt_path={ckpt_path}: {path} is truncated or not a checkpoint; pass its run folder to use "
            "the newest complete one"
        )
    return path


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (its parent, or above checkpoints/)."""
    parent = checkpoint.parent
    return parent.parent if parent.name == CHECKPOINTS else parent


def run_dir_for(ckpt_path: str | None) -> str:
    """Hydra's run dir: the resumed run's own folder, or a new one."""
    if ckpt_path in (None, "", "null", "None"):
        return new_run_dir()
    return str(run_dir_of(find_checkpoint(str(ckpt_path))))


def rank_zero_only(value):
    """Hydra writes logs and .hydra/ per process; only rank 0 may write into the run folder."""
    return value if global_rank() == 0 else None


def log_file(path: str) -> str:
    return path if global_rank() == 0 else os.devnull
