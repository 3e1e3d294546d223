"""Experiment loggers, placed inside the run folder."""

from __future__ import annotations

import csv
from pathlib import Path

from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig, OmegaConf

# What each logger needs to write inside the run folder rather than somewhere of its own.
PLACEMENT = {
    "CSVLogger": {"name": "", "version": ""},
    "TensorBoardLogger": {"name": "tensorboard", "version": ""},
    "WandbLogger": {},
}


class _AppendingWriter(ExperimentWriter):
    """Lightning's writer deletes an existing metrics.csv; a resumed run must append to it.
    (Its save() already merges a changed header into the existing rows.)"""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):  # start from the columns already there
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger, except that resuming a run keeps the epochs already logged."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def build_loggers(cfg: DictConfig, run_dir: Path, resolved: dict) -> list:
    """Instantiate every configured logger with its files in run_dir."""
    loggers = []
    for conf in (cfg.logger or {}).values():
        kind = conf._target_.rsplit(".", 1)[-1]
        extra = dict(PLACEMENT.get(kind, {}), save_dir=str(run_dir))
        if kind == "WandbLogger":
            extra.update(name=conf.get("name") or run_dir.name, config=resolved)
        # merged, not passed as kwargs: `config` (the W&B run config) is instantiate's own first argument
        loggers.append(instantiate({**OmegaConf.to_container(conf, resolve=True), **extra}, _convert_="all"))
    return loggers
