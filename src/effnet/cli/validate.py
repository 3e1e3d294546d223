"""Check every value of a composed config before anything is created or imported.

Hydra already rejects unknown groups and options, and keys set without `+`; effnet.cli.schema
refuses a key added with `+` that nothing reads. This catches the values: ranges, types, choices
and paths, for train.py (`validate`) and for eval.py, predict.py and export.py
(`validate_command`). Each problem is a UserError naming the key, the value and what is accepted.
Imports no torch: the Hydra callback runs this before the run folder exists.
"""

from __future__ import annotations

import numbers
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from effnet import cluster
from effnet.checkpoints.find import locate
from effnet.data import folders
from effnet.data.scan import BAD_IMAGE_POLICIES, BALANCES
from effnet.deploy.paths import PREPROCESSING_FILE, expand_inputs, model_file
from effnet.errors import UserError
from effnet.metrics import LOGGED, MONITOR_MODES
from effnet.recipes import AUG_LEVELS, CACHE_MODES, LR_FIND_MIN_STEPS

PRECISIONS = (
    "32-true",
    "32",
    "bf16-mixed",
    "16-mixed",
    "bf16-true",
    "16-true",
    "64-true",
    "64",
    "transformer-engine",
)
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def positive(v) -> bool:
    return _is_number(v) and v > 0


def int_at_least(n: int) -> Callable:
    return lambda v: _is_int(v) and v >= n


def in_range(lo: float, hi: float, hi_inclusive: bool = False) -> Callable:
    return lambda v: _is_number(v) and lo <= v and (v <= hi if hi_inclusive else v < hi)


def one_of(*choices) -> Callable:
    return lambda v: v in choices


def positive_int_list(v) -> bool:
    return OmegaConf.is_list(v) and all(_is_int(x) and x >= 1 for x in v)


def channel_values(lowest: float, inclusive: bool = True) -> Callable:
    """mean/std: one number for every channel, or one per RGB channel, each >= (or >) `lowest`."""

    def ok(v) -> bool:
        return (
            OmegaConf.is_list(v)
            and len(v) in (1, 3)
            and all(_is_number(x) and (x >= lowest if inclusive else x > lowest) for x in v)
        )

    return ok


WORKERS = (lambda v: v == "auto" or (_is_int(v) and v >= 0), "auto or an integer >= 0")
VAL_FRACTION = (
    "data.val_fraction",
    lambda v: _is_number(v) and 0 < v < 1,
    "a number in (0, 1), e.g. 0.2",
    False,
)
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming")


# key, check, accepted values, null allowed (null = "from the recipe / the tier")
RULES: list[tuple[str, Callable, str, bool]] = [
    ("epochs", int_at_least(1), "an integer >= 1, e.g. epochs=20", True),
    (
        "lr",
        lambda v: v == "find" or positive(v),
        "a number > 0, e.g. lr=1e-3, or find (the learning-rate finder)",
        True,
    ),
    ("batch_size", int_at_least(1), "an integer >= 1, e.g. batch_size=32", True),
    ("dropout", in_range(0, 1), "a number in [0, 1), e.g. dropout=0.2", True),
    ("aug", one_of(*AUG_LEVELS), "one of: " + ", ".join(AUG_LEVELS), True),
    ("image_size", int_at_least(16), "an integer >= 16 (pixels), e.g. image_size=224", True),
    ("seed", int_at_least(0), "an integer >= 0", False),
    ("dry_run", one_of(True, False), "true or false", False),
    ("show_batch", one_of(True, False), "true or false", False),
    VAL_FRACTION,
    ("data.min_images", int_at_least(0), "an integer >= 0", False),
    ("data.num_workers", *WORKERS, False),
    ("data.threads", lambda v: v == "auto" or (_is_int(v) and v >= 1), "auto or an integer >= 1", False),
    ("data.cache", one_of(*CACHE_MODES), "one of: " + ", ".join(CACHE_MODES), False),
    ("data.on_bad_image", one_of(*BAD_IMAGE_POLICIES), "one of: " + ", ".join(BAD_IMAGE_POLICIES), False),
    ("data.balance", one_of(*BALANCES), "one of: " + ", ".join(BALANCES), False),
    ("data.max_image_pixels", int_at_least(1), "an integer >= 1, e.g. 100000000", False),
    (
        "model.backbone",
        lambda v: isinstance(v, str) and v != "",
        "a timm model name, e.g. efficientnet_b0",
        False,
    ),
    ("model.image_size", int_at_least(16), "an integer >= 16", False),
    ("model.dropout", in_range(0, 1), "a number in [0, 1)", False),
    ("model.drop_path", in_range(0, 1), "a number in [0, 1)", False),
    ("model.pretrained", one_of(True, False), "true or false", False),
    ("model.head.hidden", positive_int_list, "a list of layer widths, e.g. [256] or []", False),
    ("model.freeze_epochs", int_at_least(0), "an integer >= 0", False),
    ("model.label_smoothing", in_range(0, 1), "a number in [0, 1)", False),
    ("model.ema", one_of(True, False), "true or false", False),
    ("model.ema_decay", lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1), e.g. 0.999", False),
    ("model.grad_checkpointing", one_of(True, False), "true, false or null (the gpu tier decides)", True),
    ("model.channels_last", one_of(True, False), "true, false or null (on for CUDA)", True),
    ("model.compile", one_of("auto", True, False), "auto, true or false", False),
    ("model.compile_min_steps", int_at_least(1), "an integer >= 1", False),
    (
        "model.preprocessing.mean",
        channel_values(0),
        "[r, g, b] in 0-1, e.g. [0.5,0.5,0.5], or null (the backbone's)",
        True,
    ),
    (
        "model.preprocessing.std",
        channel_values(0, inclusive=False),
        "[r, g, b] > 0, e.g. [0.5,0.5,0.5], or null (the backbone's)",
        True,
    ),
    (
        "model.preprocessing.crop_pct",
        in_range(0.1, 1, True),
        "a number in [0.1, 1], or null (the backbone's)",
        True,
    ),
    (
        "model.preprocessing.interpolation",
        one_of(*INTERPOLATIONS),
        "one of: " + ", ".join(INTERPOLATIONS) + ", or null (the backbone's)",
        True,
    ),
    ("optimizer.weight_decay", lambda v: _is_number(v) and v >= 0, "a number >= 0", False),
    (
        "optimizer.backbone_lr_scale",
        lambda v: _is_number(v) and 0 < v <= 1,
        "a number in (0, 1], e.g. 0.4",
        False,
    ),
    ("scheduler.warmup_epochs", lambda v: _is_number(v) and v >= 0, "a number >= 0", False),
    ("scheduler.min_lr", lambda v: _is_number(v) and v >= 0, "a number >= 0", False),
    ("trainer.precision", one_of(*PRECISIONS, 16, 32, 64), "one of: " + ", ".join(PRECISIONS[:6]), True),
    ("trainer.num_nodes", int_at_least(1), "an integer >= 1", False),
    ("trainer.ddp_timeout_s", positive, "a number of seconds > 0, e.g. 600", False),
    ("gpu.min_micro_batch", int_at_least(1), "an integer >= 1", False),
    ("gpu.usable_fraction", lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1], e.g. 0.9", False),
    ("gpu.cuda_overhead_gb", lambda v: _is_number(v) and v >= 0, "a number of GB >= 0, e.g. 0.5", False),
    ("dashboards.samples", int_at_least(0), "an integer >= 0, e.g. dashboards.samples=16", False),
    ("dashboards.train_batch", int_at_least(0), "an integer >= 0, e.g. dashboards.train_batch=16", False),
    ("lr_find.min_lr", positive, "a number > 0, e.g. 1e-7", False),
    ("lr_find.max_lr", positive, "a number > 0, e.g. 1", False),
    (
        "lr_find.steps",
        int_at_least(LR_FIND_MIN_STEPS),
        f"an integer >= {LR_FIND_MIN_STEPS} (the suggestion needs that many points), e.g. 100",
        False,
    ),
    ("sweep.fail_fast", one_of(True, False), "true or false", False),
    ("divergence.patience", int_at_least(1), "an integer >= 1, or null (never stop)", True),
    ("train.monitor", one_of(*LOGGED), "one of the metrics effnet logs: " + ", ".join(LOGGED), False),
    ("train.monitor_mode", one_of(*MONITOR_MODES), "one of: " + ", ".join(MONITOR_MODES), False),
    (
        "train.early_stopping.patience",
        int_at_least(1),
        "an integer >= 1 (epochs without improvement), or null (never stop early)",
        True,
    ),
    ("train.early_stopping.min_delta", lambda v: _is_number(v) and v >= 0, "a number >= 0", False),
]

# the data_size rows hold numbers: `find` is for the command line's lr alone
ROW_RULES = [
    ("lr", positive, "a number > 0, e.g. lr=1e-3", False) if r[0] == "lr" else r
    for r in RULES
    if r[0] in ("epochs", "lr", "batch_size", "dropout", "aug")
]


def check(cfg: DictConfig, key: str, ok: Callable, accepted: str, nullable: bool, prefix: str = "") -> None:
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    if value is None and nullable:
        return
    if value is None or not ok(value):
        shown = "null" if value is None else value
        raise UserError(f"{prefix}{key}={shown}: must be {accepted}")


def _check_rows(cfg: DictConfig) -> None:
    """The data_size row(s) in use hold numbers too; a bad override there is just as bad."""
    rows = cfg.data_size.rows if "rows" in cfg.data_size else {cfg.data_size.name: cfg.data_size}
    for name, row in rows.items():
        prefix = f"data_size.rows.{name}." if "rows" in cfg.data_size else "data_size."
        for key, ok, accepted, _ in ROW_RULES:
            check(row, key, ok, accepted, False, prefix)


def _check_devices(cfg: DictConfig) -> None:
    devices = cfg.trainer.devices
    if not (
        devices == "auto"
        or (_is_int(devices) and devices >= 1)
        or OmegaConf.is_list(devices)
        or devices == -1
    ):
        raise UserError(
            f"trainer.devices={devices}: must be auto, -1, an integer >= 1 or a list of device ids"
        )


def _check_paths(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg.data, "root") or cfg.data.root is None:
        raise UserError(
            "data.root is required: python train.py data.root=/path/to/images (or data=demo for a synthetic demo)"
        )
    if not cfg.data.generate_demo:
        root = Path(str(cfg.data.root)).expanduser()
        if cfg.ckpt_path is not None and not root.exists():
            raise UserError(
                f"data.root={cfg.data.root}: folder not found; if the run's data folder moved, resume with "
                "data.root=<where it is now>: the run's split follows it"
            )
        folders.check_root(cfg.data.root)  # the walk itself is the start's, once (effnet.start)
    weights = cfg.model.weights
    if weights is not None:
        path = Path(str(weights)).expanduser()
        if not path.is_file():
            raise UserError(f"model.weights={weights}: file not found")
        if path.suffix.lower() not in WEIGHT_SUFFIXES:
            raise UserError(f"model.weights={weights}: expected one of {', '.join(WEIGHT_SUFFIXES)}")
    if cfg.ckpt_path is not None:
        locate(str(cfg.ckpt_path), "resume", "ckpt_path")


def _check_combinations(cfg: DictConfig) -> None:
    if cfg.lr_find.min_lr >= cfg.lr_find.max_lr:
        raise UserError(
            f"lr_find.min_lr={cfg.lr_find.min_lr} is not below lr_find.max_lr={cfg.lr_find.max_lr}: "
            "the finder sweeps from the one up to the other"
        )
    if cfg.show_batch and cfg.dry_run and not cfg.dashboards.train_batch:
        raise UserError(
            "show_batch=true with dashboards.train_batch=0 draws no image: set dashboards.train_batch=16"
        )
    if cfg.lr == "find" and cfg.ckpt_path is not None:
        raise UserError(
            f"lr=find with ckpt_path={cfg.ckpt_path}: the finder looks for a new run's lr, and a resume "
            "keeps its checkpoint's schedule; drop ckpt_path (or lr=find)"
        )


def validate(cfg: DictConfig) -> None:
    """Raise UserError for the first bad value. Cheap: runs before the run folder exists."""
    for key, ok, accepted, nullable in RULES:
        check(cfg, key, ok, accepted, nullable)
    _check_rows(cfg)
    _check_combinations(cfg)
    _check_devices(cfg)
    cluster.check_job_shape(cfg.trainer.devices, cfg.trainer.num_nodes)  # inside srun or torchrun
    _check_paths(cfg)


def validate_launcher(config: DictConfig) -> None:
    """Before a sweep submits anything: a SLURM launcher must ask for the job shape Lightning accepts."""
    from effnet.sweep_jobs import swept_keys

    cluster.check_launcher(config, swept_keys(config.hydra))


# eval.py, predict.py, export.py

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
    sizes = cfg.bench.batch_sizes
    if not OmegaConf.is_list(sizes) or not sizes or not all(_is_int(b) and b >= 1 for b in sizes):
        shown = list(sizes) if OmegaConf.is_list(sizes) else sizes
        raise UserError(f"bench.batch_sizes={shown}: must be a list of integers >= 1, e.g. [1,32]")
    locate(str(cfg.ckpt), "model", "ckpt")  # export reads a checkpoint, not a bundle
    if cfg.out is not None:
        out = Path(str(cfg.out)).expanduser()
        if out.exists() and not out.is_dir():
            raise UserError(f"out={cfg.out}: is a file; export writes a bundle folder")
        if out.is_dir() and any(out.iterdir()) and not (out / PREPROCESSING_FILE).is_file():
            raise UserError(
                f"out={cfg.out}: a folder that is not an export bundle; export replaces the folder it "
                "writes, so name a new or empty one"
            )
        _check_creatable("out", out, cfg.out)


def _check_predict(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "inputs") or cfg.inputs is None:
        raise UserError("inputs is required: an image, a folder or a quoted glob like 'photos/*.jpg'")
    expand_inputs(str(cfg.inputs))
    if cfg.out != "-":
        out = Path(str(cfg.out)).expanduser()
        if out.is_dir():
            raise UserError(f"out={cfg.out}: is a folder; name a .csv or .json file, or - for stdout")
        _check_creatable("out", out.parent, cfg.out)


def _check_creatable(key: str, folder: Path, value=None) -> None:
    """`folder` exists, or can be made below its nearest existing ancestor. Tried for real (an
    empty folder made and removed): permission bits say nothing for root, read-only mounts or
    /proc."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".effnet-check-", dir=existing))
    except OSError as exc:
        shown = folder if value is None else value
        raise UserError(f"{key}={shown}: cannot be written ({existing}: {exc.strerror})") from exc


BENCH_RULES = [
    ("bench.images", int_at_least(1), "an integer >= 1, e.g. bench.images=1024", False),
    ("bench.val_images", int_at_least(1), "an integer >= 1", False),
    ("bench.epochs", int_at_least(1), "an integer >= 1 (the first epoch is cold, the rest cached)", False),
    ("bench.ceiling_steps", int_at_least(1), "an integer >= 1", False),
    ("bench.warmup_steps", int_at_least(0), "an integer >= 0", False),
    ("bench.rounds", int_at_least(1), "an integer >= 1 (3 for a comparison: the medians of 3 rounds)", False),
]
BENCH_COMPARE = ("timm", "plain")


def _check_bench(cfg: DictConfig) -> None:
    """bench.py takes every train.py key, checked by train.py's rules, plus its own."""
    validate(cfg)
    if cfg.lr == "find":
        raise UserError(
            "lr=find runs with train.py (the finder trains nothing to measure); give bench.py a number or null"
        )
    compare = cfg.bench.compare
    names = [] if compare is None else [compare] if isinstance(compare, str) else list(compare)
    if any(n not in BENCH_COMPARE for n in names):
        raise UserError(
            f"bench.compare={compare}: must be null, timm, plain or a list of them, e.g. bench.compare=[timm,plain]"
        )
    if not (OmegaConf.is_list(cfg.bench.threads) and all(_is_int(t) and t >= 1 for t in cfg.bench.threads)):
        raise UserError(f"bench.threads={cfg.bench.threads}: must be a list of integers >= 1, e.g. [1,2]")


COMMAND_RULES = {"eval": EVAL_RULES, "predict": PREDICT_RULES, "export": EXPORT_RULES, "bench": BENCH_RULES}
EXTRA_CHECKS = {"export": _check_export, "predict": _check_predict, "bench": _check_bench}


def _validate_rules(cfg: DictConfig, rules) -> None:
    for key, ok, accepted, nullable in rules:
        check(cfg, key, ok, accepted, nullable)
    if OmegaConf.is_missing(cfg, "ckpt"):  # `"ckpt" in cfg` is False for ???, so ask first
        raise UserError("ckpt is required: pass a .ckpt file, a training run folder or an export bundle")
    if "ckpt" in cfg and not Path(str(cfg.ckpt)).expanduser().exists():
        raise UserError(
            f"ckpt={cfg.ckpt}: not found; pass a .ckpt file, a training run folder or an export bundle"
        )
    if "ckpt" not in cfg:  # bench.py: train.py's rules, checked by _check_bench
        return
    model_file(str(cfg.ckpt))  # a folder without a model, a file that is no checkpoint
    root = OmegaConf.select(cfg, "data.root")
    if root is not None:  # eval and export may score another folder; the command walks it, once
        folders.check_root(root)


def validate_command(command: str, cfg: DictConfig) -> None:
    """The rules of eval.py, predict.py or export.py (`command`), checked before the run folder exists."""
    _validate_rules(cfg, COMMAND_RULES[command])
    if command in EXTRA_CHECKS:
        EXTRA_CHECKS[command](cfg)
