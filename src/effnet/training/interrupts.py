"""Ctrl-C, SIGTERM (preemption, `kill`) and SLURM's pre-timeout signal: stop cleanly, say how to resume.

Lightning already stops after the current step when it receives SIGTERM (and forwards the signal
to the other ranks it launched). SIGINT and SIGUSR1 are turned into that same SIGTERM, so every
interrupt takes one path: the step finishes, a checkpoint of that moment is written, and the run
exits with 128 + the signal number and one line holding the command that resumes it. A second
Ctrl-C abandons the step at once; the atomic checkpoint writes keep every file on disk whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import sys
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger("effnet")

# SLURM: `#SBATCH --signal=USR1@90` sends SIGUSR1 90 s before the time limit.
FORWARDED = (signal.SIGINT, signal.SIGUSR1)


class Interrupts(Callback):
    """Records which signal asked the run to stop, turns SIGINT/SIGUSR1 into Lightning's SIGTERM,
    and writes checkpoints/interrupted.ckpt when Lightning stops the run: the weights at that
    moment, for evaluating or exporting (resume uses the epoch-end last.ckpt, see checkpoints.py).

    The handlers go in before the data scan. Lightning only installs its own when training starts
    (and forgets earlier signals), so a signal that came during setup is sent again then.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.received: signal.Signals | None = None
        self.written: Path | None = None
        self._previous: dict[int, object] = {}

    def _on_sigterm(self, signum, frame) -> None:
        self.received = self.received or signal.Signals(signum)

    def _on_forwarded(self, signum, frame) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.received = self.received or signal.Signals(signum)
        if signum == signal.SIGINT:
            print(
                "effnet: stopping after this step and saving a checkpoint (Ctrl-C again to stop now)",
                file=sys.stderr,
                flush=True,
            )
        os.kill(os.getpid(), signal.SIGTERM)

    @contextlib.contextmanager
    def installed(self):
        """The handlers, for the duration of the run (Lightning composes its SIGTERM one on top)."""
        handlers = {signal.SIGTERM: self._on_sigterm, **dict.fromkeys(FORWARDED, self._on_forwarded)}
        for signum, handler in handlers.items():
            self._previous[signum] = signal.signal(signum, handler)
        try:
            yield self
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.received is not None:  # arrived before Lightning listened: tell it now
            os.kill(os.getpid(), signal.SIGTERM)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or not trainer.is_global_zero:
            return
        # no barrier here (trainer.save_checkpoint has one): the other ranks may be gone already
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, self.path)
        self.written = self.path


def resume_command(run_dir: Path, argv: list[str] | None = None) -> str:
    """The user's command line with ckpt_path pointing at this run folder."""
    argv = list(sys.argv if argv is None else argv)
    args = [a for a in argv[1:] if not a.lstrip("+").startswith("ckpt_path=")]
    return shlex.join(["python", argv[0], *args, f"ckpt_path={run_dir}"])


def exit_interrupted(
    received: signal.Signals, trainer, run_dir: Path, resume_epoch: int, saved: Path | None
) -> None:
    """One line on stderr (rank 0) with the resume command, then exit 128 + signal number."""
    if trainer.is_global_zero:
        print(
            f"effnet: interrupted by {received.name} in epoch {trainer.current_epoch + 1}/{trainer.max_epochs} "
            f"(step {trainer.global_step}); "
            + (f"weights at this step saved to {saved}; " if saved else "")
            + f"resume with: {resume_command(run_dir)}  (continues from the start of epoch {resume_epoch + 1})",
            file=sys.stderr,
            flush=True,
        )
    raise SystemExit(128 + int(received))
