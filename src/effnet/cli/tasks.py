"""Hydra tasks behind eval.py, predict.py and export.py; like app.train_task, no torch at import.

Each checks its values first (one line and exit 2 for a bad one, before any model is loaded),
then imports the module that does the work.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from effnet import run_claim
from effnet.cli.app import VALIDATED
from effnet.cli.argv import command_words
from effnet.cli.validate import validate_command
from effnet.deploy.paths import deployable_file
from effnet.errors import UserError, exit_for, held_warnings


def _checked(command: str, cfg: DictConfig, work) -> dict:
    try:
        with held_warnings():  # torch's or Pillow's warnings never precede effnet's own line
            if Path(HydraConfig.get().runtime.output_dir).absolute() not in VALIDATED:
                validate_command(command, cfg)  # a multirun job, or a compose() user: no callback ran
            return work()
    except Exception as exc:  # one line, not Hydra's "Error executing job" preamble
        if isinstance(exc, UserError):
            run_claim.discard(Path(HydraConfig.get().runtime.output_dir))  # eval's folder, if new
        exit_for(exc)


def eval_task(cfg: DictConfig) -> float:
    def work():
        deployable_file(str(cfg.ckpt))  # an unfinished export bundle: one line before torch loads
        from effnet.deploy.evaluate import evaluate

        return evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))

    return _checked("eval", cfg, work)["top1"]


def predict_task(cfg: DictConfig) -> None:
    def work():
        deployable_file(str(cfg.ckpt))  # an unfinished export bundle: one line before torch loads
        from effnet.deploy.predict import predict

        return predict(cfg)

    _checked("predict", cfg, work)


def export_task(cfg: DictConfig) -> None:
    def work():
        from effnet.deploy.export import export

        return export(cfg, command=" ".join([*command_words(sys.argv[0]), *sys.argv[1:]]))

    _checked("export", cfg, work)
