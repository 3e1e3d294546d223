"""Experiment loggers, placed inside the run folder, and what each kind is sent beyond scalars.

W&B is set up so that it never prompts and never hangs: without an API key or a reachable server
the run is written offline (one line says how to upload it later), each run is finished even
when training fails (so the next job of a sweep gets its own run), and a sweep's jobs are named
after the values they sweep and grouped by the sweep.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import netrc
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from effnet import sweep_jobs
from effnet.online import reachable

log = logging.getLogger("effnet")

# What each logger needs to write inside the run folder rather than somewhere of its own.
PLACEMENT = {
    "CSVLogger": {"name": "", "version": ""},
    "TensorBoardLogger": {"name": "tensorboard", "version": ""},
    "WandbLogger": {},
}
WANDB_HOST = "https://api.wandb.ai"
# Top-level keys that are null in the config when the recipe decides them; W&B gets the values used.
RECIPE_KEYS = ("epochs", "lr", "batch_size", "dropout", "aug", "image_size")


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


def has_wandb_key(host: str = WANDB_HOST, environ: Mapping[str, str] = os.environ) -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` puts it)."""
    if environ.get("WANDB_API_KEY") or environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    path = environ.get("NETRC") or Path(environ.get("HOME", Path.home())) / ".netrc"
    try:
        return netrc.netrc(path).authenticators(urlparse(host).hostname or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """(mode, why): WANDB_MODE when set; else offline without a key or a reachable server.

    wandb itself would prompt for a key on a terminal, or retry a dead network for minutes.
    """
    if environ.get("WANDB_MODE"):
        return environ["WANDB_MODE"], f"WANDB_MODE={environ['WANDB_MODE']}"
    host = environ.get("WANDB_BASE_URL", WANDB_HOST)
    if not has_wandb_key(host, environ):
        return "offline", "no W&B API key; `wandb login` once to log online"
    if not reachable(host):
        return "offline", f"{host} is unreachable"
    return "online", "online"


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger with a mode that never prompts, best.ckpt as the only uploaded model,
    and finish() to close the run (Lightning leaves it open, and the next run would reuse it)."""

    def __init__(self, *args, mode: str | None = None, log_model: bool | str = False, **kwargs) -> None:
        import wandb

        self.mode, self.mode_reason = (mode, f"logger.wandb.mode={mode}") if mode else wandb_mode()
        if log_model and self.mode != "online":
            log.info(
                "logger.wandb.log_model: W&B is %s, so best.ckpt stays in the run folder only", self.mode
            )
            log_model = False
        kwargs.setdefault("settings", wandb.Settings(silent=True))  # our one line instead of wandb's banner
        super().__init__(*args, mode=self.mode, log_model=log_model, **kwargs)
        if not self._wandb_init.get("anonymous"):
            self._wandb_init.pop("anonymous", None)  # wandb warns about the setting even when None

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        """Add what the run config lacks: the module's hparams use some of the config's top-level
        names (`optimizer`, `scheduler`) for flat values, and must not replace its sections."""
        params = {k: v for k, v in dict(params).items() if k not in self.experiment.config}
        if params:
            super().log_hyperparams(params)

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        if checkpoint_callback.monitor is not None:  # best.ckpt, not last.ckpt
            super().after_save_checkpoint(checkpoint_callback)

    def finish(self, failed: bool) -> None:
        if self._experiment is None:
            return
        run_path = Path(self._experiment.dir).parent  # .../wandb/offline-run-<time>-<id>
        self._experiment.finish(exit_code=1 if failed else 0)
        if self.mode == "offline":
            log.info("W&B run saved offline (%s); upload it with: wandb sync %s", self.mode_reason, run_path)


@contextlib.contextmanager
def finishing(loggers: list) -> Iterator[None]:
    """Finish every W&B run on the way out, failed or not: a sweep's next job needs a run of its own."""
    failed = True
    try:
        yield
        failed = False
    finally:
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                logger.finish(failed)


def run_identity(run_dir: Path) -> tuple[str, str | None]:
    """(name, group): a sweep job is named by the values it sweeps and grouped by its sweep folder."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return run_dir.name, None
    return sweep_jobs.job_name(HydraConfig.get()), sweep_jobs.sweep_group(HydraConfig.get())


def run_config(config: Mapping[str, Any], resolved: dict) -> dict:
    """The composed config as a nested dict, with the values the recipe chose in place of its nulls."""
    config = OmegaConf.to_container(OmegaConf.create(dict(config)), resolve=True)
    config.update({k: resolved[k] for k in RECIPE_KEYS if config.get(k) is None and k in resolved})
    config["resolved"] = resolved
    return config


def build_loggers(
    loggers: Mapping[str, Mapping[str, Any]], config: Mapping[str, Any], run_dir: Path, resolved: dict
) -> list:
    """Instantiate every configured logger (the plan's `records.loggers`) with its files in run_dir;
    W&B's run config is the composed `config` with the plan's values (`resolved`)."""
    built = []
    for conf in loggers.values():
        kind = conf["_target_"].rsplit(".", 1)[-1]
        extra = dict(PLACEMENT.get(kind, {}), save_dir=str(run_dir))
        if kind == "WandbLogger":
            name, group = run_identity(run_dir)
            extra.update(
                name=conf.get("name") or name,
                group=conf.get("group") or group,
                config=run_config(config, resolved),
            )
        # merged, not passed as kwargs: `config` (the W&B run config) is instantiate's own first argument;
        # not recursive: that config holds the loggers' own `_target_`s
        built.append(instantiate({**conf, **extra}, _convert_="all", _recursive_=False))
    return built


def _to_wandb(logger, step, images, tables, confusion, summary) -> None:
    import wandb

    data = {key: wandb.Image(str(path)) for key, path in images.items()}
    for key, rows in tables.items():
        data[key] = wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows])
    if confusion is not None:
        counts, classes = confusion
        cells = [
            [classes[i], classes[j], int(counts[i][j])]
            for i in range(len(classes))
            for j in range(len(classes))
        ]
        data["val/confusion_matrix"] = wandb.plot_table(  # the chart wandb.plot.confusion_matrix draws
            vega_spec_name="wandb/confusion_matrix/v1",
            data_table=wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=cells),
            fields={"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
            string_fields={"title": "val confusion matrix"},
        )
    if data:
        logger.log_metrics(data, step=step)
    if summary:
        logger.experiment.summary.update(summary)


def _markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(
        lines
        + [
            "| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()) + " |"
            for r in rows
        ]
    )


def _to_tensorboard(logger, step, images, tables, confusion, summary) -> None:
    import numpy as np
    from PIL import Image

    for key, path in images.items():
        with Image.open(path) as image:
            logger.experiment.add_image(key, np.asarray(image.convert("RGB")), step, dataformats="HWC")
    for key, rows in tables.items():
        logger.experiment.add_text(key, _markdown(rows), step)
    for key, value in summary.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            logger.experiment.add_scalar(key, value, step)


# Which loggers take pictures and tables, and how; the CSV logger has them as files in the run folder.
PUBLISHERS = ((LightningWandbLogger, _to_wandb), (TensorBoardLogger, _to_tensorboard))


def publish(
    loggers: list,
    step: int,
    images: dict[str, Path] | None = None,
    tables: dict[str, list[dict]] | None = None,
    confusion: tuple | None = None,
    summary: dict | None = None,
) -> None:
    """Send PNGs, tables, a confusion matrix (counts, class names) and summary values to every logger
    that can show them. Call on rank 0 only."""
    for logger in loggers:
        for kind, send in PUBLISHERS:
            if isinstance(logger, kind):
                send(
                    logger,
                    step,
                    images or {},
                    {k: v for k, v in (tables or {}).items() if v},
                    confusion,
                    summary or {},
                )
