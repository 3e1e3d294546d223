"""When one DDP rank fails, every rank stops, and the user reads the error that started it.

Ending the processes is already bounded: Lightning's launcher watches the ranks it started and
kills them all when one exits non-zero, and gloo/NCCL raise "connection closed" on the survivors
as soon as the failed process is gone. What goes wrong is the message: the survivors' errors
("Connection closed by peer") come last and hide the real one. So every failing rank records its
error in <run>/failures/rank-N.txt the moment Lightning reports it (before teardown closes the
connections, so the cause is always stamped before its consequences); a rank whose own error came
later prints one line naming the rank and error that came first, instead of its traceback (in a
sweep, that line is the failed job's reason).
"""

from __future__ import annotations

import re
import shutil
import time
import traceback
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from effnet.errors import RankFailed
from effnet.files import write_text

FAILURES = "failures"
WAIT_S = 1.0  # for a record from another rank, when this rank's looks like the first


def clear(run_dir: Path) -> None:
    """Rank 0 at start-up, before the other ranks exist: records of an earlier attempt go."""
    shutil.rmtree(run_dir / FAILURES, ignore_errors=True)


def record(run_dir: Path, rank: int, exc: BaseException) -> Path:
    """Write this rank's error: the first line is what the other ranks print."""
    folder = run_dir / FAILURES
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rank-{rank}.txt"
    text = f"{time.time():.6f} {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}\n"
    return write_text(path, text + "".join(traceback.format_exception(exc)))


def first_failure(run_dir: Path, rank: int, wait_s: float = WAIT_S) -> tuple[int, str, Path] | None:
    """(rank, 'Type: message', record) of the earliest failure on another rank, if it came first."""
    folder = run_dir / FAILURES
    own = folder / f"rank-{rank}.txt"
    deadline = time.monotonic() + wait_s
    while True:
        records = []
        for path in folder.glob("rank-*.txt"):
            stamp, _, error = path.read_text().partition("\n")[0].partition(" ")
            records.append((float(stamp), int(path.stem.split("-")[1]), error, path))
        records.sort()
        if records and records[0][3] != own:
            _, other, error, path = records[0]
            return other, error, path
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


class RecordFailure(Callback):
    """Lightning calls on_exception before it tears the strategy down: record the error there."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.world_size > 1 and isinstance(exception, Exception):
            record(self.run_dir, trainer.global_rank, exception)


def timed_out(exc: BaseException) -> bool:
    """A collective that waited out the process-group timeout: gloo's "Timed out waiting 600000ms
    for recv operation", NCCL's "... ran for 600000 milliseconds before timing out", the store's
    "wait timeout". torch raises them all as RuntimeError (DistBackendError) with only the text to tell."""
    return (
        isinstance(exc, RuntimeError)
        and re.search(r"timed out|timeout|timing out", str(exc), re.I) is not None
    )


def raise_if_not_first(
    run_dir: Path, rank: int, world_size: int, exc: BaseException, timeout_s: float | None = None
) -> None:
    """If another rank failed before this one, raise RankFailed naming its error (the caller shows
    it as one line, or, in a sweep, as the job's reason); likewise when this rank waited out the
    process-group timeout for ranks that never answered (a node that died or hung records nothing).
    Returns (and the caller re-raises) when this rank's error is the one to show."""
    if world_size <= 1 or not isinstance(exc, Exception):
        return
    found = first_failure(run_dir, rank)
    if found is not None:
        other, error, path = found
        raise RankFailed(
            f"rank {other} failed: {error}; rank {rank} stopped with it "
            f"({type(exc).__name__}). Traceback of rank {other}: {path}"
        ) from exc
    if timeout_s is not None and timed_out(exc):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise RankFailed(
            f"rank {rank} waited trainer.ddp_timeout_s={timeout_s:g} s for the other ranks, in vain: "
            f"a rank or its node died, hung or lost the network ({type(exc).__name__}: {first})"
        ) from exc
