"""Find the classes and images in a user's folder, and hold out a validation split.

Pure Python (no torch) so a bad `data.root` is reported before anything heavy is imported.
The split is written into the run folder: a resumed or evaluated run sees the same images.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from effnet.errors import UserError
from effnet.files import write_json

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
VAL_NAMES = ("val", "valid", "validation")
SPLIT_FILE = "split.json"

Sample = tuple[str, int]  # (path, class index)


@dataclass
class Split:
    """Which image goes where. `held_out` is True when val was carved out of one folder."""

    root: str
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] = field(default_factory=list)
    held_out: bool = False


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def class_folders(folder: Path) -> list[Path]:
    """The class subfolders of `folder`: every visible directory, sorted by name."""
    return [
        Path(e.path)
        for e in sorted(os.scandir(folder), key=lambda e: e.name)
        if e.is_dir() and not e.name.startswith(".")
    ]


def files_in(class_folder: Path) -> list[str]:
    """Every visible file below a class folder (recursively, following links), sorted."""
    return sorted(
        os.path.join(dirpath, f)
        for dirpath, dirs, files in os.walk(class_folder, followlinks=True)
        for f in files
        if not f.startswith(".")
    )


def layout_folders(root: str | os.PathLike) -> list[Path]:
    """The folders whose subfolders are classes: train/, val/ and test/ when present, else root."""
    root = Path(root).expanduser()
    if not (root / "train").is_dir():
        return [root]
    return [root / "train", *[p for p in (_subfolder(root, VAL_NAMES), root / "test") if p and p.is_dir()]]


def scan_classes(folder: Path, exclude: Collection[str] = ()) -> dict[str, list[str]]:
    """Map each class subfolder to its sorted image paths (recursively), leaving out `exclude`
    (files the data scan found unusable); classes left empty are dropped."""
    classes: dict[str, list[str]] = {}
    for class_folder in class_folders(folder):
        images = [p for p in files_in(class_folder) if is_image(p) and p not in exclude]
        if images:
            classes[class_folder.name] = images
    return classes


def _subfolder(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _samples(by_class: dict[str, list[str]], classes: list[str]) -> list[Sample]:
    index = {c: i for i, c in enumerate(classes)}
    return [(path, index[c]) for c, paths in by_class.items() for path in paths]


def stratified_split(
    by_class: dict[str, list[str]], val_fraction: float, seed: int
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Hold out `val_fraction` of every class (at least one image where a class has two or more)."""
    rng = random.Random(seed)
    train, val = {}, {}
    for name, paths in by_class.items():
        shuffled = paths[:]
        rng.shuffle(shuffled)
        n_val = round(len(paths) * val_fraction)
        n_val = min(max(n_val, 1 if len(paths) > 1 else 0), len(paths) - 1)
        val[name], train[name] = sorted(shuffled[:n_val]), sorted(shuffled[n_val:])
    return train, val


def discover(
    root: str | os.PathLike, val_fraction: float = 0.2, seed: int = 42, exclude: Collection[str] = ()
) -> Split:
    """Read `root` as train/ + val/ (+ test/) folders, or as one folder of classes to split.
    Files in `exclude` are left out before the split is drawn."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(
            f"data.root={root}: folder not found; point data.root at a folder of class subfolders"
        )
    train_dir, val_dir = root / "train", _subfolder(root, VAL_NAMES)
    held_out = not train_dir.is_dir()
    train_by_class = scan_classes(root if held_out else train_dir, exclude)
    if not train_by_class:
        where = root if held_out else train_dir
        raise UserError(
            f"data.root={root}: no images found in {where}/<class>/ "
            f"(expected class subfolders holding {', '.join(IMAGE_EXTENSIONS)} files)"
        )
    classes = sorted(train_by_class)
    if len(classes) < 2:
        raise UserError(f"data.root={root}: found one class ({classes[0]}); a classifier needs at least two")

    if held_out:
        train_by_class, val_by_class = stratified_split(train_by_class, val_fraction, seed)
    elif val_dir is None:
        train_by_class, val_by_class = stratified_split(train_by_class, val_fraction, seed)
        held_out = True
    else:
        val_by_class = scan_classes(val_dir, exclude)
        unknown = sorted(set(val_by_class) - set(classes))
        if unknown:
            raise UserError(
                f"{val_dir}: class folder(s) {', '.join(unknown)} have no training images in {train_dir}; "
                "add them to train/ or remove them from the validation folder"
            )
    test_dir = root / "test"
    test_by_class = (
        {c: p for c, p in scan_classes(test_dir, exclude).items() if c in classes}
        if test_dir.is_dir()
        else {}
    )
    return Split(
        root=str(root),
        classes=classes,
        train=_samples(train_by_class, classes),
        val=_samples(val_by_class, classes),
        test=_samples(test_by_class, classes),
        held_out=held_out,
    )


def save_split(split: Split, run_dir: Path) -> Path:
    return write_json(run_dir / SPLIT_FILE, split.__dict__, indent=1)


def load_split(run_dir: Path) -> Split | None:
    path = run_dir / SPLIT_FILE
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    for key in ("train", "val", "test"):
        raw[key] = [tuple(s) for s in raw[key]]
    return Split(**raw)


def without(split: Split, exclude: Collection[str]) -> Split:
    """The same split minus files found unusable since it was saved (a resumed run)."""

    def keep(samples: list[Sample]) -> list[Sample]:
        return [s for s in samples if s[0] not in exclude]

    return Split(
        split.root, split.classes, keep(split.train), keep(split.val), keep(split.test), split.held_out
    )


def class_counts(samples: list[Sample], classes: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(classes, 0)
    for _, label in samples:
        counts[classes[label]] += 1
    return counts
