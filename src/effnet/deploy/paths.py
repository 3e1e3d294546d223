"""The files a deploy command reads: the model behind `ckpt=` and the images behind `inputs=`.

No torch: eval.py, predict.py and export.py check these before Hydra makes a folder and before
any model is loaded, so a wrong path is one line in a second.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from effnet.checkpoints.find import locate
from effnet.errors import UserError

PREPROCESSING_FILE = "preprocessing.json"  # what makes a folder an export bundle
EXPORT_FILE = "export.json"  # written last by export.py: what makes a bundle a verified one
ONNX_FILES = ("model.int8.onnx", "model.onnx")  # a bundle's preferred model first
BUNDLE_MODELS = (*ONNX_FILES, "model.pt", "model.safetensors")
EXPORTED_SUFFIXES = (".onnx", ".pt", ".safetensors")


def model_file(ckpt: str) -> Path:
    """A model file, an export bundle folder (its int8 ONNX first) or a training run folder."""
    path = Path(ckpt).expanduser()
    if path.is_dir() and (path / PREPROCESSING_FILE).is_file():
        found = next((path / n for n in BUNDLE_MODELS if (path / n).is_file()), None)
        if found is None:
            raise UserError(f"ckpt={ckpt}: export bundle without a model ({', '.join(BUNDLE_MODELS)})")
        return found
    if path.is_file() and path.suffix in EXPORTED_SUFFIXES:
        return path
    return locate(ckpt, "model", "ckpt")


def deployable_file(ckpt: str) -> Path:
    """model_file, refusing a model from an export bundle that export.py did not finish."""
    path = model_file(ckpt)
    if path.suffix in EXPORTED_SUFFIXES and (path.parent / PREPROCESSING_FILE).is_file():
        check_complete(path.parent, ckpt)
    return path


def check_complete(folder: Path, ckpt: str) -> None:
    """A bundle folder without export.json is what an export cut short leaves (before effnet
    built bundles aside and swapped them in): its model was never checked against PyTorch."""
    if not (folder / EXPORT_FILE).is_file():
        raise UserError(
            f"ckpt={ckpt}: unfinished export bundle ({folder} has no {EXPORT_FILE}: the export that wrote "
            "it did not finish, so its model was never verified); run export.py again for it, or pass "
            "the training run folder"
        )


def expand_inputs(inputs: str) -> list[Path]:
    """A file, a folder (every file under it, recursively, hidden ones skipped) or a glob."""
    path = Path(inputs).expanduser()
    if path.is_dir():
        files = [
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
    elif path.is_file():
        files = [path]
    else:
        files = [Path(p) for p in glob.glob(os.path.expanduser(inputs), recursive=True) if Path(p).is_file()]
    if not files:
        raise UserError(
            f"inputs={inputs}: no files found; pass an image, a folder or a quoted glob like 'photos/*.jpg'"
        )
    return sorted(files)
