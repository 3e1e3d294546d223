"""Ctrl-C, SIGTERM (preemption, `kill`) and SLURM's pre-timeout signal: stop cleanly, say how to resume.

SIGINT, SIGTERM and SIGUSR1 take one path: the current training step finishes (on every rank,
whichever got the signal), a checkpoint of that moment is written, and the run exits with 128 +
the signal number and one line holding the command that resumes it. A second Ctrl-C abandons the
step at once; so does a batch still running STOP_GRACE_S after SIGINT or SIGTERM (a first step on
huge images); the atomic checkpoint writes keep every file on disk whole.

In a SLURM batch job, SIGUSR1 is the warning before the time limit (`--signal=USR1@90`; the
hydra/launcher=slurm preset asks for it): rank 0 then requeues the job, which starts again in the
same run folder and resumes there by itself (effnet.cluster has the whole story).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from effnet import cluster, run_names
from effnet.cli.argv import command_words

log = logging.getLogger("effnet")

# SLURM: `#SBATCH --signal=USR1@90` sends SIGUSR1 90 s before the time limit.
REQUEUE_SIGNAL = signal.SIGUSR1
SIGNALS = (signal.SIGINT, signal.SIGTERM, REQUEUE_SIGNAL)
# A batch (training or validation) still running this long after SIGINT/SIGTERM is abandoned: a
# first step on huge images would otherwise hold the stop for minutes (a signal handler runs only
# between Python instructions, not inside one convolution).
STOP_GRACE_S = 5.0
# Test hook: seconds each training step takes longer, to stand for a slow first step.
STEP_DELAY_ENV = "EFFNET_STEP_DELAY_S"


class Interrupts(Callback):
    """Records which signal asked the run to stop, stops every rank at the end of the same
    training step, and writes checkpoints/interrupted.ckpt there: the weights at that moment, for
    evaluating or exporting (resume uses the epoch-end last.ckpt, see checkpoints.py).

    The ranks agree at the end of each training batch (an all-reduce of the signal number), so
    whichever ranks got the signal, all of them stop at the same step. Lightning's own SIGTERM
    handling cannot do that: its handler runs a broadcast inside the signal handler, and checks
    its flag on each rank alone; when SLURM or torchrun signal every rank at once, ranks meet in
    different collectives and hang until the process-group timeout. So effnet takes SIGTERM back
    from Lightning when training starts. A signal during setup or validation stops the run at the
    end of the next training step (validation batches differ between ranks: no agreement there).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.received: signal.Signals | None = None
        self.written: Path | None = None
        self.requeue = False  # rank 0 of a SLURM job stopped by its time-limit warning
        self.resume: str = ""  # the command that resumes the run, should the requeue fail
        self._previous: dict[int, object] = {}
        self._watchdog: threading.Thread | None = None
        self._closed = threading.Event()
        self._batch_started: float | None = None  # time.monotonic() of the batch in progress
        self.stopping = False  # a step boundary was reached: the orderly stop is under way
        self.trainer = None

    def _on_signal(self, signum, frame) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.received = self.received or signal.Signals(signum)
        if signum == signal.SIGINT:
            print(
                f"effnet: stopping after this step and saving a checkpoint (a step still running in "
                f"{STOP_GRACE_S:g} s is abandoned; Ctrl-C again to stop now)",
                file=sys.stderr,
                flush=True,
            )
        if signum != REQUEUE_SIGNAL and self._watchdog is None:  # SLURM's warning leaves time to requeue
            self._watchdog = threading.Thread(target=self._watch, args=(self.received,), daemon=True)
            self._watchdog.start()

    def _watch(self, received: signal.Signals) -> None:
        """The watchdog, a thread: it runs while the main one is inside a long torch operation.
        A batch in progress that has not ended STOP_GRACE_S after the signal (or after it began)
        is abandoned: say what is kept and leave now. A signal during setup still stops at the end
        of the first step, as that step is quick; a checkpoint being written when the process
        leaves is a .tmp the next start removes, the previous file intact."""
        signalled = time.monotonic()
        while not self.stopping and not self._closed.is_set():
            started = self._batch_started
            if started is not None and time.monotonic() - max(signalled, started) > STOP_GRACE_S:
                if run_names.global_rank() == 0:
                    print(f"effnet: {self.abandoned_line(received)}", file=sys.stderr, flush=True)
                os._exit(128 + int(received))
            self._closed.wait(0.2)

    def abandoned_line(self, received: signal.Signals) -> str:
        from effnet.checkpoints import find, resume

        run_dir = self.path.parent.parent
        where = ""
        if self.trainer is not None:
            where = f" in epoch {self.trainer.current_epoch + 1}/{self.trainer.max_epochs} (step {self.trainer.global_step})"
        last = find.in_folder(run_dir / find.CHECKPOINTS, "resume")
        then = (
            f"resume with: {resume_command(run_dir)}  (continues from the start of epoch {resume.resume_epoch(last) + 1})"
            if last is not None
            else "no checkpoint had been written yet: start the run again"
        )
        return (
            f"interrupted by {received.name}{where}; the step in progress had not ended {STOP_GRACE_S:g} s "
            f"later, so it was abandoned (no checkpoint of this moment); {then}"
        )

    @contextlib.contextmanager
    def installed(self):
        """The handlers, for the duration of the run."""
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        try:
            yield self
        finally:
            self._closed.set()
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)

    def requeue_if_asked(self) -> None:
        """Requeue the SLURM job (see exit_interrupted); called once the run has closed its loggers,
        as SLURM ends the job's processes (SIGTERM, then SIGKILL after KillWait) once it is requeued."""
        if not self.requeue:
            return
        self.requeue = False
        why = cluster.requeue()
        if why is not None:
            print(
                f"effnet: error: could not requeue ({why}); resume with: {self.resume}",
                file=sys.stderr,
                flush=True,
            )

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning has just put in its SIGTERM handler (see the class docstring); its teardown
        # puts this one back, and installed() the one from before the run.
        signal.signal(signal.SIGTERM, self._on_signal)
        self.trainer = trainer

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_started = time.monotonic()
        if delay := float(os.environ.get(STEP_DELAY_ENV, "0") or 0):
            time.sleep(delay)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch_started = time.monotonic()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._batch_started = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batch_started = None
        signum = int(self.received or 0)
        if trainer.world_size > 1:  # every rank runs as many training batches: all get here
            agreed = torch.tensor([signum], device=trainer.strategy.root_device)
            torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
            signum = int(agreed.item())
        if signum:
            self.received = self.received or signal.Signals(signum)  # a rank the signal missed
            self.stopping = True  # the watchdog stands down: this is the orderly stop
            raise SIGTERMException

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or not trainer.is_global_zero:
            return
        # no barrier here (trainer.save_checkpoint has one): the other ranks may be gone already
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, self.path)
        self.written = self.path


def job_argv() -> list[str] | None:
    """A sweep job's own command line: the entry script and the job's overrides. sys.argv is the
    whole sweep there (-m lr=1e-3,3e-3), or, in a job submitit started, submitit's own."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return [os.environ.get(run_names.SCRIPT_ENV, sys.argv[0]), *HydraConfig.get().overrides.task]


def resume_command(run_dir: Path, argv: list[str] | None = None) -> str:
    """The user's command line (a sweep job's own) with ckpt_path pointing at this run folder."""
    argv = list(argv or job_argv() or sys.argv)
    args = [a for a in argv[1:] if not a.lstrip("+").startswith("ckpt_path=")]
    return shlex.join([*command_words(argv[0], keep_path=True), *args, f"ckpt_path={run_dir}"])


def exit_interrupted(stop: Interrupts, trainer, run_dir: Path, resume_epoch: int) -> None:
    """One line on stderr (rank 0) with the resume command, or for SLURM's time-limit warning in a
    batch job, that the job is requeued (Interrupts.requeue_if_asked); then exit 128 + signal number."""
    received = stop.received
    assert received is not None
    stop.resume = resume_command(run_dir)
    stop.requeue = received == REQUEUE_SIGNAL and trainer.is_global_zero and cluster.in_batch_job()
    if trainer.is_global_zero:
        then = f"(continues from the start of epoch {resume_epoch + 1})"
        print(
            f"effnet: interrupted by {received.name} in epoch {trainer.current_epoch + 1}/{trainer.max_epochs} "
            f"(step {trainer.global_step}); "
            + (f"weights at this step saved to {stop.written}; " if stop.written else "")
            + (
                f"requeueing SLURM job {cluster.job_label()}: it starts again in {run_dir} "
                f"and resumes by itself {then}"
                if stop.requeue
                else f"resume with: {stop.resume}  {then}"
            ),
            file=sys.stderr,
            flush=True,
        )
    raise SystemExit(128 + int(received))
