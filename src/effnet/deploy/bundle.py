"""A trained module -> the network you deploy, and the files that travel beside it.

The deployable network takes the loaders' uint8 images and normalises inside, so an exported
model cannot be fed the wrong mean/std; labels.json and preprocessing.json say the rest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from effnet.deploy.paths import PREPROCESSING_FILE
from effnet.errors import UserError
from effnet.files import write_json
from effnet.preprocessing import Preprocessing

LABELS_FILE = "labels.json"


class Uint8Classifier(nn.Module):
    """uint8 NCHW images -> logits: normalisation is part of the graph that gets exported."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("scale_mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("scale_std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images.float() - self.scale_mean) / self.scale_std)


def deployable(module) -> Uint8Classifier:
    """The network validation scored (the EMA average when the run kept one), taking uint8 input."""
    prep = module.preprocessing
    return Uint8Classifier(module.eval_model(), prep.mean, prep.std).eval()


def write_meta(folder: Path, prep: Preprocessing, classes: Sequence[str]) -> None:
    write_json(folder / PREPROCESSING_FILE, prep.to_json())
    write_json(folder / LABELS_FILE, list(classes))


def read_meta(folder: Path) -> tuple[Preprocessing, list[str]]:
    try:
        prep = Preprocessing.from_dict(json.loads((folder / PREPROCESSING_FILE).read_text()))
        classes = json.loads((folder / LABELS_FILE).read_text())
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"{folder}: not an effnet export bundle ({PREPROCESSING_FILE} and {LABELS_FILE} "
            f"are needed next to the model: {exc})"
        ) from exc
    return prep, list(classes)
