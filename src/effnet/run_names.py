"""Run folders: a fresh one per run, or the folder of the run being resumed.

Every run lives in outputs/train/<timestamp>_<suffix>/ with its checkpoints in checkpoints/.
The suffix keeps two runs started in the same second apart; external launchers (torchrun, SLURM)
start every rank as its own process, so there the name comes from what all ranks share.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import time

from effnet.checkpoints.find import RUNS_ROOT, locate, run_dir_of
from effnet.errors import UserError

log = logging.getLogger("effnet")

# The entry script as the user ran it (set by effnet.cli.app.main): the commands effnet prints from
# inside a job that a launcher started (submitit runs the job under its own sys.argv) name it.
SCRIPT_ENV = "EFFNET_SCRIPT"


def global_rank() -> int:
    """This process's rank as the launchers announce it (0 when not distributed)."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def fresh_name() -> str:
    return f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{secrets.token_hex(3)}"


# torchrun's --rdzv-id when none is given (multi-node --rdzv-backend=c10d): the same for every run
TORCHRUN_DEFAULT_ID = "none"
AGREED_NAME_KEY = "effnet/run_dir"


def agreed_name(timeout_s: float = 60) -> str:
    """torchrun without --rdzv-id: the ranks agree on a fresh name through the store torchrun's
    agent serves its workers (MASTER_ADDR:MASTER_PORT). The first rank to ask sets it; the others
    get that one. Without that store there is nothing to agree through: ask for --rdzv-id."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        raise UserError(
            "torchrun without --rdzv-id: pass a unique --rdzv-id (e.g. $SLURM_JOB_ID), "
            "which names the run folder outputs/train/torchrun-<id>"
        )
    from datetime import timedelta

    from torch.distributed import TCPStore

    store = TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=timedelta(seconds=timeout_s),
    )
    return store.compare_set(AGREED_NAME_KEY, "", fresh_name()).decode()


@functools.cache
def new_run_dir() -> str:
    """Cached: Hydra and Lightning's DDP launcher both resolve the run dir, and must agree.

    Under torchrun and SLURM every rank is its own process and resolves it itself, so the name
    must be one they all arrive at, and a different one for every run: torchrun's run id
    (`--rdzv-id`; single-node torchrun makes a fresh one), or when none was given a name the ranks
    agree on through torchrun's store; under srun, the SLURM job id (kept by a requeued job, which
    then resumes in the same folder).
    """
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if world > 1 and run_id == TORCHRUN_DEFAULT_ID:
        return str(RUNS_ROOT / agreed_name())
    if world > 1 and run_id:
        return str(RUNS_ROOT / f"torchrun-{run_id}")
    if world > 1 and os.environ.get("SLURM_JOB_ID"):
        return str(RUNS_ROOT / f"slurm-{os.environ['SLURM_JOB_ID']}")
    return str(RUNS_ROOT / fresh_name())


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
