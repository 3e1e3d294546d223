"""A sweep trial that cannot win stops early: Optuna pruning for a job of effnet's sweeper.

After every epoch the job's train.monitor (val top-1 by default) goes to its Optuna trial as an
intermediate value (step = the epoch, 1 for the first: the curves optuna-dashboard draws, and
what the pruner compares across trials, in the study's direction, which follows the monitor), and the study's pruner decides whether the trial goes on. A pruned run stops
like a finished one, at the end of that epoch, with its checkpoints and summary.json (which
records why in `pruned`); the job then tells the sweeper (effnet.cli.app.job_pruned).

Only rank 0 talks to the study; every rank takes its decision (as StopOnDivergence does).
Its own module, next to divergence.py: it is about stopping a run.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import Callback

from effnet.sweeper import MONITOR, TrialRef

log = logging.getLogger("effnet")


class ReportToTrial(Callback):
    """Report `monitor` after each epoch to the trial `ref` names; stop when the pruner says so."""

    def __init__(self, ref: TrialRef, monitor: str = MONITOR) -> None:
        self.ref = ref
        self.monitor = monitor
        self.trial = None
        self.pruned: str | None = None  # why, once pruned

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.trial is None:
            self.trial = self.ref.open()
            log.info(
                "reporting %s to Optuna trial %d of study %s",
                self.monitor,
                self.ref.number,
                self.ref.study_name,
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        why = self._report(trainer) if trainer.is_global_zero else None
        if trainer.strategy.reduce_boolean_decision(why is not None, all=False):
            self.pruned = why or "pruned by rank 0"
            trainer.should_stop = True

    def _report(self, trainer: L.Trainer) -> str | None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or self.trial is None:
            return None
        epoch = trainer.current_epoch + 1
        self.trial.report(float(value), step=epoch)
        if not self.trial.should_prune():
            return None
        pruner = type(self.trial.study.pruner).__name__
        return f"after epoch {epoch} of {trainer.max_epochs} by {pruner} ({self.monitor} {float(value):.4f})"
