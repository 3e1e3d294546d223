"""The state that makes resume exact.

Resume happens at an epoch boundary. The data order and every sample's augmentation are a pure
  function of (seed, epoch) (see effnet.data.dataset.EpochSampler), so what a resumed run still needs is the
  state of the model, optimizer, scheduler and EMA (Lightning saves those) plus the global RNGs
  that dropout, drop-path, mixup and random erasing draw from. A run killed mid-epoch replays that
  epoch from its start and ends bit-identical to an uninterrupted run on the CPU.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from effnet.files import write_csv

STATE_KEY = "effnet_resume"


def resume_epoch(checkpoint: Path) -> int:
    """The epoch a resumed run starts (0-based): the one after the last completed epoch."""
    return epoch_to_resume(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True))


def epoch_to_resume(state: dict) -> int:
    """resume_epoch of a checkpoint already loaded (mmap: no full read)."""
    if STATE_KEY in state:
        return int(state[STATE_KEY]["next_epoch"])
    return int(state.get("epoch", -1)) + 1  # a checkpoint from before effnet recorded it


def saved_optimisation(checkpoint: Path) -> dict:
    """The checkpoint's optimisation section, or the flat hyper-parameters of an older checkpoint
    (mmap: no full read)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    hparams = state.get("hyper_parameters") or {}
    return dict(hparams.get("optimisation") or hparams)


def planned_epochs(checkpoint: Path) -> int | None:
    """The epoch count the checkpoint's learning-rate schedule was built for."""
    epochs = saved_optimisation(checkpoint).get("epochs")
    return None if epochs is None else int(epochs)


def trim_metrics(metrics_csv: Path, next_epoch: int) -> int:
    """Drop the rows of epochs the resumed run is about to replay, so none is logged twice."""
    if not metrics_csv.is_file():
        return 0
    with open(metrics_csv, newline="") as file:
        reader = csv.DictReader(file)
        fields, rows = reader.fieldnames or [], list(reader)
    kept = [r for r in rows if not r.get("epoch") or int(float(r["epoch"])) < next_epoch]
    if len(kept) < len(rows):
        write_csv(metrics_csv, kept, fields)
    return len(rows) - len(kept)


def rng_states() -> dict[str, Any]:
    """Global RNG states as tensors and plain Python values (loadable with weights_only=True)."""
    np_state = np.random.get_state(legacy=False)
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = states["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumeState(Callback):
    """Adds the epoch to resume at and the global RNG states to every checkpoint; restores them.

    The RNGs are restored at the start of the resumed epoch, not when the checkpoint is read: the
    sanity check and the loaders' setup in between would otherwise shift them. The sampler's
    epoch is set on load because Lightning creates the first iterator before it calls set_epoch.
    A checkpoint is also written when a fresh run starts, so there is always a point to resume
    from, even when the first epoch is interrupted.
    """

    def __init__(self, last_path: Path, sampler=None) -> None:
        self.last_path = Path(last_path)
        self.sampler = sampler
        self._pending: dict[str, Any] | None = None

    @staticmethod
    def next_epoch(trainer: L.Trainer) -> int:
        """Epoch-end saves resume at the next epoch; any other save replays the current one."""
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        finished = trainer.num_training_batches and done >= trainer.num_training_batches
        return trainer.current_epoch + (1 if finished else 0)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[STATE_KEY] = {"next_epoch": self.next_epoch(trainer), "rng": rng_states()}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(STATE_KEY)
        if state is None:
            return
        self._pending = state["rng"]
        if self.sampler is not None:
            self.sampler.set_epoch(state["next_epoch"])

    def on_train_start(self, trainer, pl_module) -> None:
        # decided on what every rank knows alike: save_checkpoint waits for all ranks
        if trainer.ckpt_path is None:
            trainer.save_checkpoint(self.last_path, weights_only=False)  # the full state, to resume

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None
