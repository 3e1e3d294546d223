"""A run whose training loss stops being a number ends, keeping the weights it had before.

With a learning rate far too high, or fp16 overflowing, the loss turns nan or inf and every later
step trains on garbage: without a check the run finishes with exit status 0, saves nan weights as
best.ckpt, and predict and export carry the nan on. A Lightning callback watches the loss of
every training step and stops the run after `patience` non-finite steps in a row (fp16 training
can recover from a few: the grad scaler skips those steps). Checkpoints are only written at
validation and epoch ends, which this callback sees first (Lightning runs checkpoint callbacks
last) and which it refuses to pass while the weights hold nan or inf. So last.ckpt is the last
finite state and best.ckpt is never a diverged model.

Its own module, not effnet.training.callbacks: it is about stopping a run, not what a run records.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from effnet.errors import UserError

log = logging.getLogger("effnet")


class Diverged(UserError):
    """Training produced non-finite values; one line, status 2."""


def nonfinite_tensors(module: torch.nn.Module) -> list[str]:
    """Names of the floating-point weights and buffers (EMA and batch-norm statistics too) that
    hold nan or inf."""
    state = {k: v for k, v in module.state_dict().items() if torch.is_floating_point(v)}
    if not state:
        return []
    finite = torch.stack([torch.isfinite(v).all() for v in state.values()]).tolist()  # one sync
    return [name for name, ok in zip(state, finite, strict=True) if not ok]


class StopOnDivergence(Callback):
    """Stop after `patience` consecutive non-finite training losses (None: never), and before
    any checkpoint of non-finite weights. Every rank takes the same decision."""

    def __init__(self, patience: int | None, last_checkpoint: Path) -> None:
        self.patience = patience
        self.last_checkpoint = Path(last_checkpoint)
        self.streak = 0
        self._first: tuple[int, int, int, str] | None = None  # step, epoch, batch, value

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is None:
            return
        bad = trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss).all()), all=False)
        if not bad:
            self.streak, self._first = 0, None
            return
        self.streak += 1
        if self._first is None:
            self._first = (trainer.global_step, trainer.current_epoch + 1, batch_idx + 1, f"{loss.item()}")
        if self.patience is not None and self.streak >= self.patience:
            self._stop(
                trainer, pl_module, f"{self.streak} steps in a row (divergence.patience={self.patience})"
            )

    def on_validation_start(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._refuse_nonfinite_weights(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self._refuse_nonfinite_weights(trainer, pl_module)

    def _refuse_nonfinite_weights(self, trainer: L.Trainer, pl_module) -> None:
        bad = nonfinite_tensors(pl_module)
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            where = f"e.g. {bad[0]}" if bad else "on another rank"
            self._stop(trainer, pl_module, f"and the weights now hold nan or inf ({where})")

    def _stop(self, trainer: L.Trainer, pl_module, how: str) -> None:
        step, epoch, batch, value = self._first or (trainer.global_step, trainer.current_epoch + 1, 0, "nan")
        lr = pl_module.optimisation.lr
        precision = str(trainer.precision)
        fp16 = (
            f"fp16 overflow (precision={precision}: try bf16-mixed or 32-true)"
            if precision.startswith("16")
            else f"fp16 overflow with precision=16-mixed (this run: {precision})"
        )
        message = (
            f"training diverged: the training loss became {value} at step {step} (epoch {epoch}, batch "
            f"{batch}), {how}; stopped. Likely causes: a learning rate too high (lr={lr:g}: try 10x lower), "
            f"or {fp16}. The diverged weights were not saved; {self.last_checkpoint} holds the last finite ones"
        )
        log.error(message)
        raise Diverged(message)
