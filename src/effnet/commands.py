"""Hydra tasks behind eval.py, predict.py and export.py; like cli.train_task, no torch at import.

Each checks its values first (one line and exit 2 for a bad one, before any model is loaded),
then imports the module that does the work.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from effnet.config import check, int_at_least, one_of, positive
from effnet.errors import UserError, exit_with, one_line

WORKERS = (lambda v: v == "auto" or (isinstance(v, int) and v >= 0), "auto or an integer >= 0")
VAL_FRACTION = ("data.val_fraction", lambda v: positive(v) and v < 1, "a number in (0, 1), e.g. 0.2", False)
COMMON = [
    ("batch_size", int_at_least(1), "an integer >= 1, e.g. batch_size=32", False),
    ("num_workers", *WORKERS, False),
]
EVAL_RULES = [
    *COMMON,
    ("split", one_of("val", "test", "train"), "one of: val, test, train", False),
    ("tta", one_of(True, False), "true or false", False),
    ("misclassified", int_at_least(0), "an integer >= 0 (images in the grid)", False),
    VAL_FRACTION,
]
PREDICT_RULES = [
    *COMMON,
    ("topk", int_at_least(1), "an integer >= 1, e.g. topk=3", False),
    ("tta", one_of(True, False), "true or false", False),
]
EXPORT_RULES = [
    *COMMON,
    ("format", one_of("onnx", "torchscript", "safetensors"), "one of: onnx, torchscript, safetensors", False),
    ("quantize", one_of("int8"), "int8 or null", True),
    ("exporter", one_of("dynamo", "torchscript"), "dynamo or torchscript", False),
    ("opset", int_at_least(7), "an ONNX opset number, e.g. 18, or null", True),
    ("calibration.images", int_at_least(1), "an integer >= 1, e.g. 300", False),
    ("calibration.batch_size", int_at_least(1), "an integer >= 1", False),
    ("verify.atol", positive, "a number > 0, e.g. 1e-4", False),
    ("val_images", int_at_least(1), "an integer >= 1 or null (all)", True),
    ("bench.enabled", one_of(True, False), "true or false", False),
    ("bench.repeats", int_at_least(1), "an integer >= 1", False),
    VAL_FRACTION,
]


def _check_export(cfg: DictConfig) -> None:
    if cfg.quantize == "int8" and cfg.format != "onnx":
        raise UserError(f"quantize=int8 needs format=onnx (got format={cfg.format})")
    sizes = list(cfg.bench.batch_sizes)
    if not sizes or not all(isinstance(b, int) and b >= 1 for b in sizes):
        raise UserError(f"bench.batch_sizes={sizes}: must be a list of integers >= 1")


RULES = {"eval": EVAL_RULES, "predict": PREDICT_RULES, "export": EXPORT_RULES}
EXTRA_CHECKS = {"export": _check_export}


def _validate(cfg: DictConfig, rules) -> None:
    for key, ok, accepted, nullable in rules:
        check(cfg, key, ok, accepted, nullable)
    if OmegaConf.is_missing(cfg, "ckpt"):  # `"ckpt" in cfg` is False for ???, so ask first
        raise UserError("ckpt is required: pass a .ckpt file, a training run folder or an export bundle")
    if "ckpt" in cfg and not Path(str(cfg.ckpt)).expanduser().exists():
        raise UserError(
            f"ckpt={cfg.ckpt}: not found; pass a .ckpt file, a training run folder or an export bundle"
        )


def validate_command(command: str, cfg: DictConfig) -> None:
    """Every check that needs no torch, run by cli.ValidateBeforeRun before the run folder exists."""
    _validate(cfg, RULES[command])
    if command in EXTRA_CHECKS:
        EXTRA_CHECKS[command](cfg)


def _run(command: str, cfg: DictConfig, work) -> dict:
    try:
        validate_command(command, cfg)  # again: the Hydra callback is skipped by compose() users
        return work()
    except Exception as exc:  # one line, not Hydra's "Error executing job" preamble
        message = one_line(exc)
        if message is None:
            raise
        exit_with(message)


def eval_task(cfg: DictConfig) -> float:
    def work():
        from effnet.evaluate import run

        return run(cfg, Path(HydraConfig.get().runtime.output_dir))

    return _run("eval", cfg, work)["top1"]


def predict_task(cfg: DictConfig) -> None:
    def work():
        from effnet.predict import run

        return run(cfg)

    _run("predict", cfg, work)


def export_task(cfg: DictConfig) -> None:
    def work():
        from effnet.export import run

        return run(cfg, command=" ".join(["python", Path(sys.argv[0]).name, *sys.argv[1:]]))

    _run("export", cfg, work)
