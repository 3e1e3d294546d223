"""The five commands, one function each: what the entry scripts (python train.py, ...) and the
installed console scripts (effnet-train, ..., pyproject.toml's [project.scripts]) both run, with
the configs that ship inside the package. No torch at import, as app.py."""

from __future__ import annotations

from effnet import CONF_DIR
from effnet.bench.task import bench_task
from effnet.cli.app import main
from effnet.cli.tasks import eval_task, export_task, predict_task


def train() -> None:
    main(config_dir=CONF_DIR, config_name="train")


def evaluate() -> None:
    main(config_dir=CONF_DIR, config_name="eval", task=eval_task)


def predict() -> None:
    main(config_dir=CONF_DIR, config_name="predict", task=predict_task)


def export() -> None:
    main(config_dir=CONF_DIR, config_name="export", task=export_task)


def bench() -> None:
    main(config_dir=CONF_DIR, config_name="bench", task=bench_task)
