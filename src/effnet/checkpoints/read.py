"""Reading a checkpoint back: safely, and into the module it was trained as.

Checkpoints are read with `weights_only=True`: a file that needs arbitrary unpickling is refused,
whoever wrote it. The module is rebuilt from the sections the checkpoint carries (network,
preprocessing, optimisation, regularisation); checkpoints written before those sections existed
carry one flat dict of hyper-parameters, which `sections` maps onto them, so they keep
evaluating, predicting and exporting.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from effnet.checkpoints.find import locate
from effnet.errors import UserError

SECTIONS = ("network", "preprocessing", "optimisation", "regularisation", "runtime")
# Flat hyper-parameters of checkpoints written before the sections, by the section they belong to.
FLAT = {
    "network": ("backbone", "classes", "image_size", "dropout", "hidden", "drop_path"),
    "optimisation": (
        "optimizer",
        "lr",
        "weight_decay",
        "scheduler",
        "epochs",
        "warmup_epochs",
        "min_lr",
        "ema_decay",
    ),
    "regularisation": ("label_smoothing", "mixup", "cutmix", "erase_prob"),
    "runtime": ("channels_last",),
}
NOT_EFFNET = "not an effnet checkpoint (no network hyper-parameters); pass a .ckpt written by train.py"


def sections(hparams: Mapping) -> dict:
    """ClassifierModule's arguments from a checkpoint's hyper-parameters, old (flat) or new."""
    if "network" in hparams:
        return {k: dict(hparams[k]) for k in SECTIONS if hparams.get(k) is not None}
    from effnet.preprocessing import pretrained_config, resolve

    out = {name: {k: hparams[k] for k in keys if k in hparams} for name, keys in FLAT.items()}
    # mean/std were saved; crop and interpolation came from timm's config of the backbone, as now
    overrides = {k: hparams[k] for k in ("mean", "std") if k in hparams}
    prep = resolve(pretrained_config(hparams["backbone"]), int(hparams["image_size"]), overrides)
    out["preprocessing"] = prep.as_dict()
    return out


def read(path: Path, key: str = "ckpt", mmap: bool = False) -> dict:
    """The checkpoint's dict, loaded with weights_only=True; one line for anything else.
    `mmap` maps the tensors instead of reading them (a look at the metadata costs no full read)."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        text = str(exc).lower()
        if "unsupported global" in text:  # a class or function it would have to import and call
            raise UserError(
                f"{key}={path}: refusing to load, it needs arbitrary unpickling (weights_only=True); "
                "use a checkpoint written by effnet's train.py"
            ) from exc
        raise UserError(f"{key}={path}: not a PyTorch checkpoint; pass a .ckpt written by train.py") from exc
    except Exception as exc:  # torch raises KeyError/EOFError/RuntimeError for files of other kinds
        raise UserError(
            f"{key}={path}: not a PyTorch checkpoint ({type(exc).__name__}); pass a .ckpt written by train.py"
        ) from exc
    hparams = raw.get("hyper_parameters") if isinstance(raw, dict) else None
    if not isinstance(hparams, dict) or not (
        "network" in hparams or {"backbone", "classes", "image_size"} <= set(hparams)
    ):
        raise UserError(f"{key}={path}: {NOT_EFFNET}")
    return raw


def model_checkpoint(value: str, key: str = "ckpt") -> Path:
    """The checkpoint a run folder's model is read from: best.ckpt, else last.ckpt."""
    return locate(value, "model", key)


def load_module(path: Path, key: str = "ckpt"):
    """The ClassifierModule with the checkpoint's weights, in eval mode, on the CPU.

    Built from the saved sections with the default runtime (no channels_last, no sync batch
    norm, no checkpointing: this is for inference). timm creates the backbone with random
    weights (no hub download), then the checkpoint's state overwrites every tensor.
    """
    from effnet.training.module import ClassifierModule

    raw = read(path, key)
    state = raw["state_dict"]
    broken = [
        k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()
    ]
    if broken:
        raise UserError(
            f"{key}={path}: {len(broken)} of its weight tensors hold nan or inf (e.g. {broken[0]}): the run "
            "diverged before it was written; use an earlier checkpoint, or train again with a lower lr"
        )
    args = sections(raw["hyper_parameters"])
    args.pop("runtime", None)
    module = ClassifierModule(**args)
    module.load_state_dict(state)
    return module.eval()
