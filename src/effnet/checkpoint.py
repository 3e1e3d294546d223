"""A trained checkpoint -> the network you deploy, with the preprocessing it was trained with.

Checkpoints are read with `weights_only=True`: a file that needs arbitrary unpickling is refused,
whoever wrote it. The deployable network takes the loaders' uint8 images and normalises inside,
so an exported model cannot be fed the wrong mean/std.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from effnet.errors import UserError
from effnet.runs import CHECKPOINTS

BEST = "best.ckpt"
PREPROCESSING_FILE = "preprocessing.json"
LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class Preprocessing:
    """timm's eval transform (resize the short side to floor(size / crop_pct), centre crop) and
    the normalisation applied inside the network. Written as preprocessing.json in a bundle."""

    image_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def resize(self) -> int:
        return int(self.image_size / self.crop_pct)  # floor, as timm's eval transform

    def to_json(self) -> dict:
        return {
            **asdict(self),
            "resize_shorter_side": self.resize,
            "input": "uint8 RGB, NCHW, values 0-255",
            "steps": [
                "decode as RGB (EXIF orientation applied)",
                f"resize the shorter side to {self.resize} px ({self.interpolation})",
                f"centre crop {self.image_size} x {self.image_size}",
                "uint8 CHW, no scaling: the model computes (x - 255*mean) / (255*std) itself",
            ],
        }

    @classmethod
    def from_json(cls, raw: dict) -> Preprocessing:
        return cls(
            image_size=int(raw["image_size"]),
            crop_pct=float(raw["crop_pct"]),
            interpolation=str(raw["interpolation"]),
            mean=tuple(raw["mean"]),
            std=tuple(raw["std"]),
        )

    def transform(self):
        """The exact transform training validated with (effnet.data.eval_transform)."""
        from effnet.data import eval_transform

        return eval_transform(self.image_size, self.crop_pct, self.interpolation)


class Uint8Classifier(nn.Module):
    """uint8 NCHW images -> logits: normalisation is part of the graph that gets exported."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("scale_mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("scale_std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images.float() - self.scale_mean) / self.scale_std)


def resolve(ckpt: str, key: str = "ckpt") -> Path:
    """A .ckpt file, or a run folder (its checkpoints/best.ckpt, else last.ckpt)."""
    path = Path(ckpt).expanduser()
    if path.is_dir():
        for name in (BEST, "last.ckpt"):
            if (path / CHECKPOINTS / name).is_file():
                return path / CHECKPOINTS / name
        raise UserError(
            f"{key}={ckpt}: no {CHECKPOINTS}/{BEST} or {CHECKPOINTS}/last.ckpt in this folder; "
            "pass a .ckpt file or a training run folder"
        )
    if not path.is_file():
        raise UserError(f"{key}={ckpt}: file not found; pass a .ckpt file or a training run folder")
    return path


def read(path: Path, key: str = "ckpt") -> dict:
    """The checkpoint's dict, loaded with weights_only=True; one line for anything else."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):  # a class or function it would have to import and call
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
    if not isinstance(hparams, dict) or not {"backbone", "classes", "image_size"} <= set(hparams):
        raise UserError(
            f"{key}={path}: not an effnet checkpoint (no hyper_parameters with backbone, classes "
            "and image_size); pass a .ckpt written by train.py"
        )
    return raw


def load_module(path: Path, key: str = "ckpt"):
    """The ClassifierModule with the checkpoint's weights, in eval mode, on the CPU.

    Built from the saved hyper-parameters: timm creates the backbone with random weights (no hub
    download), then the checkpoint's state overwrites every tensor.
    """
    from effnet.model import ClassifierModule

    raw = read(path, key)
    module = ClassifierModule(**raw["hyper_parameters"])
    module.load_state_dict(raw["state_dict"])
    return module.eval()


def deployable(module) -> Uint8Classifier:
    """The network validation scored (the EMA average when the run kept one), taking uint8 input."""
    hp = module.hparams
    return Uint8Classifier(module._eval_model(), hp.mean, hp.std).eval()


def preprocessing(module) -> Preprocessing:
    hp = module.hparams
    cfg = module.net.backbone.pretrained_cfg
    return Preprocessing(
        image_size=int(hp.image_size),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        mean=tuple(float(v) for v in hp.mean),
        std=tuple(float(v) for v in hp.std),
    )


def write_bundle_meta(folder: Path, prep: Preprocessing, classes: Sequence[str]) -> None:
    from effnet.files import write_json

    write_json(folder / PREPROCESSING_FILE, prep.to_json())
    write_json(folder / LABELS_FILE, list(classes))


def read_bundle_meta(folder: Path) -> tuple[Preprocessing, list[str]]:
    try:
        prep = Preprocessing.from_json(json.loads((folder / PREPROCESSING_FILE).read_text()))
        classes = json.loads((folder / LABELS_FILE).read_text())
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"{folder}: not an effnet export bundle ({PREPROCESSING_FILE} and {LABELS_FILE} "
            f"are needed next to the model: {exc})"
        ) from exc
    return prep, list(classes)
