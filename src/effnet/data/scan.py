"""Check every file of a data set once, before training, and say what is wrong with which.

Real folders hold zero-byte files, truncated downloads, HTML saved as .jpg, 16-bit TIFFs and the
odd 20,000 x 20,000 scan. Each file is opened and fully decoded (at a reduced JPEG scale) in a
thread pool: Pillow releases the GIL while decoding. Results are cached by (size, mtime), so a
second run, or a resumed one, only rechecks files that changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from effnet.data import folders, pixels
from effnet.data.decode import DECODE_ERRORS
from effnet.errors import UserError
from effnet.files import write_json

log = logging.getLogger("effnet")

BAD_IMAGE_POLICIES = ("skip", "error")
BALANCES = ("none", "weighted_sampler", "class_weights")  # see effnet.data.balance
CACHE_DIR = Path("outputs") / "cache"
REPORT_FILE = "data_report.json"
CACHE_VERSION = 2
IMBALANCE_WARN = 3.0  # largest / smallest class above this: suggest data.balance
SHOWN_ROWS = 20  # problems printed; data_report.json has them all


@dataclass
class FileCheck:
    """What the scan learned about one file; `reason` is None for a usable image."""

    reason: str | None = None
    mode: str | None = None
    rotated: bool = False
    size: tuple[int, int] | None = None  # (width, height): the data.cache estimate needs no second open
    jpeg: bool = False


@dataclass
class DataReport:
    root: str
    files: int = 0
    usable: int = 0
    cached: int = 0
    seconds: float = 0.0
    problems: list[dict] = field(default_factory=list)  # {"file", "reason"}
    skipped: list[dict] = field(default_factory=list)  # {"file", "reason"}: symlinks that would count twice
    converted_to_rgb: dict[str, int] = field(default_factory=dict)  # original mode -> count
    exif_rotated: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)  # training images per class
    imbalance_ratio: float | None = None
    warnings: list[str] = field(default_factory=list)
    # path -> (width, height, is JPEG) of each usable image; left out of data_report.json (`record`)
    sizes: dict[str, tuple[int, int, bool]] = field(default_factory=dict, repr=False)
    unsaved: tuple[Path, dict] | None = field(default=None, repr=False)  # (cache file, entries): save_cache

    def record(self) -> dict:
        """data_report.json: what the scan found, without the per-image sizes."""
        return {k: v for k, v in asdict(self).items() if k not in ("sizes", "unsaved")}

    def save_cache(self) -> None:
        """Write the scan cache a `scan_folder(write_cache=False)` left unwritten."""
        if self.unsaved is not None:
            _save_cache(*self.unsaved)
            self.unsaved = None

    @property
    def bad_files(self) -> dict[str, str]:
        """Image files that cannot be used (not folders, not files that are no image by name),
        each with why: what a folder of nothing but corrupt files is reported with."""
        return {p["file"]: p["reason"] for p in self.problems if folders.is_image(p["file"])}


EMPTY_CLASS = "empty class folder: no usable images"


def check_image(path: str, max_pixels: int) -> FileCheck:
    """Open and decode one file the way the loader will, and name what stops it."""
    try:
        if os.path.getsize(path) == 0:
            return FileCheck("empty file (0 bytes)")
        with Image.open(path) as img:
            try:
                pixels.check(img, max_pixels)
            except pixels.TooManyPixels as exc:
                return FileCheck(str(exc))
            mode = img.mode
            rotated = img.getexif().get(0x0112, 1) not in (0, 1)
            img.draft("RGB", (64, 64))  # JPEG: decode every block, at 1/8 scale
            size, jpeg = img.size, img.format == "JPEG"  # before draft() shrinks it
            img.load()
            return FileCheck(mode=mode, rotated=rotated, size=size, jpeg=jpeg)
    except Image.DecompressionBombError as exc:
        return FileCheck(f"too many pixels (decompression bomb?): {exc}")
    except UnidentifiedImageError:
        return FileCheck("not an image: content is not a format Pillow can read")
    except DECODE_ERRORS as exc:
        return FileCheck(f"truncated or corrupt: {exc}")


def cache_path(root: str, max_pixels: int) -> Path:
    key = hashlib.sha1(f"{Path(root).expanduser().resolve()}|{max_pixels}|{CACHE_VERSION}".encode())
    return CACHE_DIR / f"scan-{key.hexdigest()[:16]}.json"


def _load_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or one cut short: scan again


def _save_cache(path: Path, entries: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, entries, indent=None)


def check_files(
    paths: list[str], max_pixels: int, cache: Path | None, workers: int, write: bool = True
) -> tuple[dict, int, dict]:
    """({path: FileCheck} for every path, reusing cached results of unchanged files; how many
    came from the cache; the cache's new entries, written unless `write` is False)."""
    entries = _load_cache(cache) if cache else {}
    results, todo, signatures = {}, [], {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            results[path] = FileCheck(f"unreadable: {exc.strerror}")
            continue
        signatures[path] = [st.st_size, st.st_mtime_ns]
        hit = entries.get(path)
        if hit and hit[0] == signatures[path]:
            results[path] = FileCheck(**hit[1])
        else:
            todo.append(path)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for path, check in zip(todo, pool.map(lambda p: check_image(p, max_pixels), todo), strict=True):
            results[path] = check
    entries = {p: [signatures[p], asdict(results[p])] for p in signatures} if cache and todo else {}
    if entries and write:
        _save_cache(cache, entries)
    return results, len(paths) - len(todo), entries


def scan_folder(
    root: str,
    max_pixels: int,
    workers: int | None = None,
    cache: Path | None = None,
    found: folders.Found | None = None,
    write_cache: bool = True,
) -> DataReport:
    """Check every file under the class folders of `root` (both layouts). Paths are absolute, as
    folders.discover's are: the unusable files it leaves out are matched by path, and a relative
    data.root must not let them all through. `found`: the folder's walk, when the command has
    walked it already. The sizes of the usable images land in `report.sizes` (not recorded in
    data_report.json): what the data.cache estimate reads instead of opening files again.
    `write_cache=False` leaves the cache's new entries in the report for `save_cache`: a start
    that ends without a run (a resume of a finished run) writes nothing."""
    started = time.perf_counter()
    root = os.path.abspath(os.path.expanduser(root))
    report = DataReport(root=str(root))
    images, class_images = [], {}
    found = folders.walk(root) if found is None else found
    report.skipped = found.skipped
    for parent, by_class in found.classes.items():
        for name, files in by_class.items():
            class_folder = parent / name
            for path in files:
                if folders.is_image(path):
                    images.append(path)
                else:
                    report.problems.append(
                        {"file": path, "reason": f"unsupported extension {Path(path).suffix or '(none)'}"}
                    )
            class_images[class_folder] = [p for p in files if folders.is_image(p)]
    checks, report.cached, entries = check_files(
        images, max_pixels, cache, workers or os.cpu_count() or 1, write=write_cache
    )
    if entries and not write_cache:
        report.unsaved = (cache, entries)
    report.files = len(images) + len(report.problems)
    modes = Counter()
    for path in images:
        check = checks[path]
        if check.reason:
            report.problems.append({"file": path, "reason": check.reason})
            continue
        report.usable += 1
        report.exif_rotated += check.rotated
        if check.size is not None:
            report.sizes[path] = (*check.size, check.jpeg)
        if check.mode != "RGB":
            modes[check.mode] += 1
    training = next(iter(found.classes), None)  # folders.layout_folders: the training folder first
    for class_folder, paths in class_images.items():
        if any(checks[p].reason is None for p in paths):
            continue
        if paths:  # corrupt data is not missing data: say what was there and why none of it counts
            first = paths[0]
            detail = f"none of its {len(paths)} image file(s) is usable, e.g. {Path(first).name}: {checks[first].reason}"
        else:
            detail = "it holds no image files"
        report.problems.append({"file": f"{class_folder}{os.sep}", "reason": f"{EMPTY_CLASS} ({detail})"})
        if class_folder.parent == training:
            report.warnings.append(f"class {class_folder.name} left out: {detail}")
    report.problems.sort(key=lambda p: p["file"])
    report.converted_to_rgb = dict(sorted(modes.items()))
    report.seconds = round(time.perf_counter() - started, 2)
    return report


def describe_validation(report: DataReport, split: folders.Split) -> None:
    """Warn about every class validation cannot score: one image in all (it trains on it, so it
    is held out of nothing), or none in a val/ folder."""
    train = folders.class_counts(split.train, split.classes)
    val = folders.class_counts(split.val, split.classes)
    for name in split.classes:
        if val[name]:
            continue
        if split.held_out and train[name] == 1:
            report.warnings.append(
                f"class {name} has a single image: it is used for training, so no validation image is "
                "held out for it and its accuracy is not measured; add images to it"
            )
        else:
            report.warnings.append(
                f"class {name} has no validation image (none in the validation folder): its accuracy is not measured"
            )


def describe_balance(report: DataReport, counts: dict[str, int], balance: str, min_images: int) -> None:
    """Record the training images per class, the imbalance ratio and the warnings that follow."""
    report.class_counts = counts
    smallest = min(counts.values()) if counts else 0
    if smallest:
        report.imbalance_ratio = round(max(counts.values()) / smallest, 2)
    if report.imbalance_ratio and report.imbalance_ratio >= IMBALANCE_WARN:
        rare = min(counts, key=counts.get)
        common = max(counts, key=counts.get)
        fix = (
            " (data.balance=weighted_sampler or class_weights evens it out)"
            if balance == "none"
            else f" (data.balance={balance} compensates)"
        )
        report.warnings.append(
            f"classes are imbalanced {report.imbalance_ratio}:1 ({common} {counts[common]} vs "
            f"{rare} {counts[rare]} training images){fix}"
        )
    total = sum(counts.values())
    if total < min_images:
        report.warnings.append(
            f"only {total} training images: fewer than the {min_images} recommended for fine-tuning; "
            "expect a noisy validation score"
        )


def enforce(report: DataReport, policy: str) -> None:
    """data.on_bad_image=error stops here, before anything is trained; skip carries on without them."""
    bad = sorted(report.bad_files)
    if bad and policy == "error":
        shown = "; ".join(f"{p['file']}: {p['reason']}" for p in report.problems if p["file"] in set(bad[:3]))
        raise UserError(
            f"data.on_bad_image=error: {len(bad)} unusable file(s) in {report.root}, e.g. {shown}; "
            "fix or remove them, or set data.on_bad_image=skip to train on the rest"
        )


def log_report(report: DataReport, policy: str) -> None:
    """A summary line, then one row per problem (at most SHOWN_ROWS), then the warnings."""
    extras = []
    if report.converted_to_rgb:
        extras.append(
            "converted to RGB: " + ", ".join(f"{m} {n}" for m, n in report.converted_to_rgb.items())
        )
    if report.exif_rotated:
        extras.append(f"{report.exif_rotated} rotated per EXIF")
    log.info(
        "data scan: %d files in %.1f s (%d cached): %d usable, %d problem(s)%s",
        report.files,
        report.seconds,
        report.cached,
        report.usable,
        len(report.problems),
        "; " + "; ".join(extras) if extras else "",
    )
    action = "skipped" if policy == "skip" else "found"
    if report.problems:
        log.warning(
            _table(f"{len(report.problems)} problem(s) {action} (data.on_bad_image={policy}):", report)
        )
    if report.skipped:
        log.warning(
            _table(f"{len(report.skipped)} symlinked file(s) or folder(s) left out:", report, "skipped")
        )
    for warning in report.warnings:
        log.warning(warning)


def _table(title: str, report: DataReport, rows_from: str = "problems") -> str:
    """`title`, then a file / reason row each (at most SHOWN_ROWS), paths relative to the root."""
    root = Path(report.root).expanduser()
    rows = [(_relative(p["file"], root), p["reason"]) for p in getattr(report, rows_from)]
    width = min(max(len(r[0]) for r in rows), 60)
    lines = [title, f"  {'file':<{width}}  reason"]
    lines += [f"  {f:<{width}}  {reason}" for f, reason in rows[:SHOWN_ROWS]]
    if len(rows) > SHOWN_ROWS:
        lines.append(f"  ... and {len(rows) - SHOWN_ROWS} more: see {REPORT_FILE} in the run folder")
    return "\n".join(lines)


def _relative(path: str, root: Path) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:
        return path
