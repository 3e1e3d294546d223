"""Find the classes and images in a user's folder, and hold out a validation split.

Pure Python (no torch) so a bad `data.root` is reported before anything heavy is imported.
The split is written into the run folder: a resumed or evaluated run sees the same images.
"""

from __future__ import annotations

import json
import os
import random
import unicodedata
from collections import Counter
from collections.abc import Collection, Mapping
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


def layout_folders(root: str | os.PathLike) -> list[Path]:
    """The folders whose subfolders are classes: train/, val/ and test/ when present, else root."""
    root = Path(root).expanduser()
    if not (root / "train").is_dir():
        return [root]
    return [root / "train", *[p for p in (_subfolder(root, VAL_NAMES), root / "test") if p and p.is_dir()]]


@dataclass
class Found:
    """Every visible file of every class folder, each real file once, and what was left out and why.

    `classes` maps each layout folder (train/, val/, test/ or the root) to {class: sorted paths};
    `skipped` holds {"file", "reason"} rows for the data report.
    """

    classes: dict[Path, dict[str, list[str]]]
    skipped: list[dict] = field(default_factory=list)


def _owner(real: str, class_dirs: dict[str, Path]) -> Path | None:
    """The class folder whose real directory holds `real`, if any."""
    folder = real
    while folder not in class_dirs:
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent
    return class_dirs[folder]


def _overlap(real: str, kept: dict[str, Path]) -> Path | None:
    """A kept class folder that is, holds or lies inside the real directory `real`."""
    for other, folder in kept.items():
        if real == other or real.startswith(other + os.sep) or other.startswith(real + os.sep):
            return folder
    return None


def walk(root: str | os.PathLike) -> Found:
    """Walk the class folders of `root` (both layouts), following symlinks, so that every real
    file is counted once and carries one label.

    Symlinks are how people assemble data sets, so they are followed, with three rules:
    - a class folder that is a link to (into, or around) another class folder is left out:
      its images would otherwise carry two labels (or leak between train and val);
    - a link inside a class folder that points into another class folder is left out: the
      image keeps the label of the folder it really lives in;
    - a folder or file reached a second time (a loop, or two links to one place) is skipped:
      loops are followed once.
    A real file outside every class folder, linked from several, belongs to the first one
    (real class folders before linked ones, then train before val before test, then by name).
    """
    parents = layout_folders(root)
    candidates = [(parent, c) for parent in parents for c in class_folders(parent)]
    real = {c: os.path.realpath(c) for _, c in candidates}
    found = Found({parent: {} for parent in parents})

    def skip(path: str, reason: str) -> None:
        found.skipped.append({"file": path, "reason": reason})

    # Real class folders first, so a link to one never displaces it.
    linked = {c: real[c] != os.path.join(os.path.realpath(p), c.name) for p, c in candidates}
    kept: dict[str, Path] = {}
    for want_linked in (False, True):
        for _, c in candidates:
            if linked[c] != want_linked:
                continue
            other = _overlap(real[c], kept)
            if other is None:
                kept[real[c]] = c
            else:
                skip(
                    f"{c}{os.sep}",
                    f"class folder shares its images with {other} through a symlink: left out, "
                    "so that no image carries two labels",
                )

    # Only a real class folder owns the files below it: a link elsewhere cannot take them.
    owners = {r: c for r, c in kept.items() if not linked[c]}
    seen_dirs: dict[str, str] = {}
    seen_files: dict[str, str] = {}
    for parent, c in sorted(candidates, key=lambda pc: linked[pc[1]]):  # real ones first
        if kept.get(real[c]) != c:
            continue
        paths: list[str] = []
        seen_dirs[real[c]] = str(c)
        stack = [(str(c), real[c])]
        while stack:
            folder, folder_real = stack.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as exc:
                skip(f"{folder}{os.sep}", f"unreadable folder: {exc.strerror}")
                continue
            for entry in entries:
                if entry.name.startswith(".") and not entry.is_dir():
                    continue
                link = entry.is_symlink()
                target = os.path.realpath(entry.path) if link else os.path.join(folder_real, entry.name)
                owner = _owner(target, owners) if link else c
                if entry.is_dir():
                    if target in seen_dirs:
                        skip(
                            f"{entry.path}{os.sep}",
                            f"link to {seen_dirs[target]}, already scanned: followed once",
                        )
                    elif owner not in (None, c):
                        skip(
                            f"{entry.path}{os.sep}",
                            f"link into class folder {owner}: left out, its images keep that label",
                        )
                    else:
                        seen_dirs[target] = entry.path
                        stack.append((entry.path, target))
                elif target in seen_files:
                    skip(entry.path, f"the same file as {seen_files[target]} (a symlink): counted once")
                elif owner not in (None, c):
                    skip(
                        entry.path, f"link to {target} in class folder {owner}: left out, it keeps that label"
                    )
                else:
                    seen_files[target] = entry.path
                    paths.append(entry.path)
        found.classes[parent][c.name] = sorted(paths)
    found.skipped.sort(key=lambda s: s["file"])
    return found


def scan_classes(by_class: dict[str, list[str]], exclude: Collection[str] = ()) -> dict[str, list[str]]:
    """{class: its images}, leaving out `exclude` (files the data scan found unusable) and
    files that are not images by name; classes left empty are dropped."""
    classes: dict[str, list[str]] = {}
    for name, files in by_class.items():
        images = [p for p in files if is_image(p) and p not in exclude]
        if images:
            classes[name] = images
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


def check_root(root: str | os.PathLike) -> Path:
    """`root` as an absolute folder (split.json must not depend on the cwd); one line when it is
    missing or a file."""
    root = Path(os.path.abspath(Path(root).expanduser()))
    if root.exists() and not root.is_dir():
        raise UserError(f"data.root={root}: is a file; point data.root at a folder of class subfolders")
    if not root.is_dir():
        raise UserError(
            f"data.root={root}: folder not found; point data.root at a folder of class subfolders"
        )
    return root


def discover(
    root: str | os.PathLike,
    val_fraction: float = 0.2,
    seed: int = 42,
    exclude: Collection[str] | Mapping[str, str] = (),
    found: Found | None = None,
) -> Split:
    """Read `root` as train/ + val/ (+ test/) folders, or as one folder of classes to split.
    Files in `exclude` (the data scan's unusable files, mapped to why where known) are left out
    before the split is drawn; symlinks count each real file once (see `walk`). `found`: the
    folder's walk, when the command has walked it already (a listing of a large folder on a
    network filesystem is the slow part of a start; effnet.start walks once)."""
    root = check_root(root)
    found = walk(root) if found is None else found
    check_class_names(root, found)
    train_dir, val_dir = root / "train", _subfolder(root, VAL_NAMES)
    held_out = not train_dir.is_dir()
    where = root if held_out else train_dir
    train_by_class = scan_classes(found.classes[where], exclude)
    if not train_by_class:
        raise UserError(f"data.root={root}: {why_no_images(where, found.classes[where], exclude)}")
    classes = sorted(train_by_class)
    if len(classes) < 2:
        dropped = dropped_classes(found.classes[where], exclude)
        raise UserError(
            f"data.root={root}: found one class ({classes[0]}); a classifier needs at least two"
            + "".join(f"; class {name} was left out: {why}" for name, why in dropped.items())
        )

    if held_out:
        train_by_class, val_by_class = stratified_split(train_by_class, val_fraction, seed)
    elif val_dir is None:
        train_by_class, val_by_class = stratified_split(train_by_class, val_fraction, seed)
        held_out = True
    else:
        val_by_class = scan_classes(found.classes[val_dir], exclude)
        unknown = sorted(set(val_by_class) - set(classes))
        if unknown:
            raise UserError(
                f"{val_dir}: class folder(s) {', '.join(unknown)} have no training images in {train_dir}; "
                "add them to train/ or remove them from the validation folder"
            )
    test_dir = root / "test"
    test_by_class = {
        c: p for c, p in scan_classes(found.classes.get(test_dir, {}), exclude).items() if c in classes
    }
    return Split(
        root=str(root),
        classes=classes,
        train=_samples(train_by_class, classes),
        val=_samples(val_by_class, classes),
        test=_samples(test_by_class, classes),
        held_out=held_out,
    )


def _first_failure(paths: list[str], exclude: Collection[str] | Mapping[str, str]) -> str:
    """`path: why` for the first of `paths` the scan found unusable (just the path where no reason
    was given)."""
    first = next(p for p in paths if p in exclude)
    reason = exclude.get(first) if isinstance(exclude, Mapping) else None
    return f"{first}: {reason}" if reason else first


def why_no_images(
    where: Path, by_class: dict[str, list[str]], exclude: Collection[str] | Mapping[str, str]
) -> str:
    """Why a folder gave no training image, told apart: no class folders, no files, no image
    files, or image files that are all unreadable (corrupt data is not missing data)."""
    files = [p for paths in by_class.values() for p in paths]
    images = [p for p in files if is_image(p)]
    wanted = f"expected class subfolders holding {', '.join(IMAGE_EXTENSIONS)} files"
    if not by_class:
        loose = [e.name for e in os.scandir(where) if e.is_file() and is_image(e.name)]
        if loose:
            return (
                f"no images found in {where}/<class>/: {len(loose)} image file(s) lie directly in {where} "
                f"({wanted}); move them into one subfolder per class"
            )
        return f"no images found in {where}/<class>/: {where} has no class subfolders ({wanted})"
    if not files:
        return (
            f"no images found in {where}/<class>/: its {len(by_class)} class folder(s) are empty ({wanted})"
        )
    if not images:
        kinds = ", ".join(
            f"{k} x{n}" for k, n in Counter(Path(p).suffix.lower() or "(none)" for p in files).most_common(3)
        )
        return (
            f"no images found in {where}/<class>/: its {len(files)} file(s) have no image extension "
            f"({kinds}); effnet reads {', '.join(IMAGE_EXTENSIONS)}"
        )
    bad = [p for p in images if p in exclude]
    return (
        f"no usable images in {where}/<class>/: found {len(images)} image file(s), all {len(bad)} "
        f"unreadable (first: {_first_failure(images, exclude)}); fix or replace them"
    )


def dropped_classes(
    by_class: dict[str, list[str]], exclude: Collection[str] | Mapping[str, str]
) -> dict[str, str]:
    """{class: why it was left out} for the class folders holding image files none of which is usable."""
    dropped = {}
    for name, files in by_class.items():
        images = [p for p in files if is_image(p)]
        if images and all(p in exclude for p in images):
            dropped[name] = (
                f"all {len(images)} of its image files are unreadable (first: {_first_failure(images, exclude)})"
            )
    return dropped


def case_insensitive(folder: Path) -> bool:
    """Whether the file system holding `folder` (a class folder) ignores case in names: its name
    with the case of its letters swapped is the same folder."""
    other = folder.with_name(folder.name.swapcase())
    if other.name == folder.name:
        return False  # no cased letter to try
    try:
        return os.path.samefile(folder, other)
    except OSError:
        return False


def class_key(name: str, ignore_case: bool) -> str:
    key = unicodedata.normalize("NFC", name)
    return key.casefold() if ignore_case else key


def check_class_names(root: Path, found: Found) -> None:
    """Refuse two class folders whose names are the same class to a person but not to Python:
    equal once Unicode-normalised (NFC: a name typed on macOS is often decomposed, 'e' + U+0301,
    where Linux keeps what it got), or differing only in case on a file system that ignores case.
    They would be two classes, or a val class with no training images, with no visible reason."""
    folders_ = [parent / name for parent, by_class in found.classes.items() for name in by_class]
    cased = next((f for f in folders_ if f.name != f.name.swapcase()), None)
    ignore_case = cased is not None and case_insensitive(cased)
    seen: dict[str, Path] = {}
    for folder in folders_:
        first = seen.setdefault(class_key(folder.name, ignore_case), folder)
        if first.name != folder.name:
            if unicodedata.normalize("NFC", first.name) == unicodedata.normalize("NFC", folder.name):
                how = f"are the same name once Unicode-normalised (NFC) but differ in bytes ({ascii(first.name)} vs {ascii(folder.name)})"
            else:
                how = "differ only in case, which this file system does not tell apart"
            raise UserError(
                f"data.root={root}: class folders {first} and {folder} {how}; rename one so that both "
                "are written the same way (or merge them)"
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


def rebase(split: Split, old_root: str, new_root: str) -> Split:
    """`split` for a data folder that moved from `old_root` to `new_root`: each file found by its
    path relative to the root."""

    def moved(samples: list[Sample]) -> list[Sample]:
        return [(os.path.join(new_root, os.path.relpath(p, old_root)), y) for p, y in samples]

    return Split(
        new_root, split.classes, moved(split.train), moved(split.val), moved(split.test), split.held_out
    )


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
