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

from effnet.checkpoints.find import RUNS_ROOT, locate, run_dir_of

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


def run_dir_for(ckpt_path: str | None) -> str:
    """Hydra's run dir: the resumed run's own folder, or a new one."""
    if ckpt_path in (None, "", "null", "None"):
        return new_run_dir()
    return str(run_dir_of(locate(str(ckpt_path), "resume", "ckpt_path")))


def rank_zero_only(value):
    """Hydra writes logs and .hydra/ per process; only rank 0 may write into the run folder."""
    return value if global_rank() == 0 else None


def log_file(path: str) -> str:
    return path if global_rank() == 0 else os.devnull
