"""The data scan on a folder holding every kind of bad file, and a loader that outlives a file
that goes bad after the scan."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from effnet.data import folders, pixels, scan
from effnet.data.datamodule import ImageDataModule
from effnet.data.decode import load_rgb
from effnet.errors import UserError
from effnet.preprocessing import Preprocessing
from tests.helpers import FAST, compose_cfg, make_images, start_and_run

MAX_PIXELS = 100 * 100  # small, so a 120 x 120 image stands in for a decompression bomb

# reason prefix expected in data_report.json for each kind of bad file
BAD_KINDS = {
    "empty": "empty file (0 bytes)",
    "truncated_jpeg": "truncated or corrupt",
    "truncated_png": "truncated or corrupt",
    "html": "not an image",
    "random_bytes": "not an image",
    "bomb": "too many pixels",
    "unsupported": "unsupported extension .txt",
}


def _jpeg_bytes(seed: int) -> bytes:
    import io

    pixels = np.random.default_rng(seed).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def write_bad(folder: Path, kind: str, i: int) -> Path:
    """One bad file of `kind` in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        path = folder / f"empty_{i}.jpg"
        path.write_bytes(b"")
    elif kind == "truncated_jpeg":
        path = folder / f"cut_{i}.jpg"
        path.write_bytes(_jpeg_bytes(i)[:600])
    elif kind == "truncated_png":
        path = folder / f"cut_{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "html":
        path = folder / f"page_{i}.jpg"
        path.write_text("<html><body>404 Not Found</body></html>")
    elif kind == "random_bytes":
        path = folder / f"noise_{i}.png"
        path.write_bytes(np.random.default_rng(i).bytes(500))
    elif kind == "bomb":
        path = folder / f"huge_{i}.png"
        Image.new("RGB", (120, 120), "white").save(path)
    elif kind == "unsupported":
        path = folder / f"notes_{i}.txt"
        path.write_text("labels: see spreadsheet")
    else:
        raise ValueError(kind)
    return path


def write_convertible(folder: Path) -> dict[str, int]:
    """Good images that need converting or rotating: grayscale, RGBA, palette, CMYK, 16-bit, EXIF."""
    Image.new("L", (40, 40), 90).save(folder / "gray.png")
    Image.new("RGBA", (40, 40), (200, 10, 10, 128)).save(folder / "alpha.png")
    Image.new("RGB", (40, 40), "red").convert("P").save(folder / "palette.png")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.fromarray((np.arange(1600).reshape(40, 40) * 40).astype(np.uint16)).save(folder / "deep.png")
    rotated = Image.new("RGB", (40, 20), "red")
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(folder / "rotated.jpg", exif=exif)
    return {"CMYK": 1, "I;16": 1, "L": 1, "P": 1, "RGBA": 1}


def make_messy(root: Path, good: dict[str, int], bad_per_kind: int = 1) -> list[Path]:
    """Good images per class, every kind of bad file spread over the classes, and a class
    folder ("moth") holding nothing usable."""
    make_images(root, good)
    classes = list(good)
    bad = [
        write_bad(root / classes[i % len(classes)], kind, i)
        for kind in BAD_KINDS
        for i in range(bad_per_kind)
    ]
    bad.append(write_bad(root / "moth", "truncated_jpeg", 99))
    return bad


@pytest.fixture
def messy(tmp_path: Path) -> tuple[Path, list[Path]]:
    root = tmp_path / "messy"
    bad = make_messy(root, {"ant": 12, "bee": 4})
    write_convertible(root / "ant")
    return root, bad


def test_scan_names_every_bad_file_and_counts_conversions(messy, tmp_path, monkeypatch):
    root, bad = messy
    monkeypatch.chdir(tmp_path)
    cache = scan.cache_path(str(root), MAX_PIXELS)
    report = scan.scan_folder(str(root), MAX_PIXELS, workers=2, cache=cache)
    reasons = {p["file"]: p["reason"] for p in report.problems}
    for kind, path in zip([*BAD_KINDS, "truncated_jpeg"], bad, strict=True):
        assert reasons[str(path)].startswith(BAD_KINDS[kind]), (kind, reasons[str(path)])
    assert reasons[f"{root / 'moth'}/"] == (
        f"{scan.EMPTY_CLASS} (none of its 1 image file(s) is usable, e.g. cut_99.jpg: {reasons[str(bad[-1])]})"
    )
    assert "class moth left out: none of its 1 image file(s) is usable" in report.warnings[0]
    assert len(report.problems) == len(bad) + 1
    assert report.usable == 12 + 4 + 6  # the six convertible images are usable
    assert report.converted_to_rgb == {"CMYK": 1, "I;16": 1, "L": 1, "P": 1, "RGBA": 1}
    assert report.exif_rotated == 1 and report.cached == 0

    # cached by (size, mtime): a second scan decodes only the file that changed
    (root / "bee" / "000.png").write_bytes(b"")
    again = scan.scan_folder(str(root), MAX_PIXELS, cache=cache)
    assert again.cached == report.files - 1 - 1  # minus the .txt (never decoded) and the changed file
    assert str(root / "bee" / "000.png") in again.bad_files
    assert str(bad[-2]) not in again.bad_files, "a .txt is reported, but is not an unusable image"


def test_converted_images_load_as_rgb_with_their_content(messy):
    root, _ = messy
    deep = np.asarray(load_rgb(str(root / "ant" / "deep.png"), 40))
    assert deep.shape == (40, 40, 3) and 0 < deep.mean() < 255, "16-bit scaled, not clipped to white"
    assert load_rgb(str(root / "ant" / "rotated.jpg"), 40).size == (20, 40), "EXIF orientation honoured"
    cmyk = np.asarray(load_rgb(str(root / "ant" / "cmyk.jpg"), 10))
    assert cmyk[..., 0].mean() > 200 and cmyk[..., 1].mean() < 60, "CMYK red stays red"


def test_training_on_a_messy_folder_completes_with_a_report(messy, tmp_path, monkeypatch, caplog):
    root, bad = messy
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    cfg = compose_cfg(
        [f"data.root={root}", *FAST, "model=mobilenetv3_small", f"data.max_image_pixels={MAX_PIXELS}"]
    )
    with caplog.at_level(logging.INFO, logger="effnet"):
        summary = start_and_run(cfg, run_dir)
    assert summary["epochs_completed"] == 1
    assert pixels.limit() == pixels.MAX_IMAGE_PIXELS, "the run's limit ends with it, not in the next run"
    report = json.loads((run_dir / scan.REPORT_FILE).read_text())
    assert {p["file"] for p in report["problems"]} == {str(p) for p in bad} | {f"{root / 'moth'}/"}
    assert report["usable"] == 22 and summary["classes"] == ["ant", "bee"]
    assert summary["num_train_images"] + summary["num_val_images"] == 22
    split = json.loads((run_dir / "split.json").read_text())
    used = {p for key in ("train", "val") for p, _ in split[key]}
    assert not used & {str(p) for p in bad}, "no bad file enters the split"
    assert report["imbalance_ratio"] >= scan.IMBALANCE_WARN
    assert "problem(s) skipped (data.on_bad_image=skip)" in caplog.text
    assert "classes are imbalanced" in caplog.text and "data.balance=weighted_sampler" in caplog.text


def test_on_bad_image_error_stops_before_training(messy, tmp_path, monkeypatch):
    root, _ = messy
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg([f"data.root={root}", *FAST, "data.on_bad_image=error"])
    with pytest.raises(UserError, match=r"data.on_bad_image=error: 6 unusable file\(s\)"):
        start_and_run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_report_lists_symlinks_left_out_and_counts_each_image_once(tmp_path, caplog):
    root = make_images(tmp_path / "linked", {"ant": 10, "bee": 4})
    (root / "ant" / "loop").symlink_to(root / "ant")
    (root / "wasp").symlink_to(root / "ant")  # a class folder linking to another class
    report = scan.scan_folder(str(root), MAX_PIXELS)
    assert (report.files, report.usable) == (14, 14), "every real image once"
    assert {os.path.relpath(s["file"], root): s["reason"].split(":")[0] for s in report.skipped} == {
        "ant/loop": f"link to {root / 'ant'}, already scanned",
        "wasp": f"class folder shares its images with {root / 'ant'} through a symlink",
    }
    split = folders.discover(root, 0.2, 0)
    scan.describe_balance(report, folders.class_counts(split.train, split.classes), "none", 0)
    assert report.imbalance_ratio == 2.67 and split.classes == ["ant", "bee"]
    with caplog.at_level(logging.WARNING, logger="effnet"):
        scan.log_report(report, "skip")
    assert "2 symlinked file(s) or folder(s) left out" in caplog.text


@pytest.mark.parametrize("workers", [0, 1])
def test_a_file_that_goes_bad_after_the_scan_does_not_end_the_epoch(tmp_path, workers, caplog):
    root = make_images(tmp_path / "ok", {"ant": 6, "bee": 6})
    split = folders.discover(root, 0.2, 0)
    assert len(split.train) == 10  # two batches of 5: every image is drawn, the broken one too
    prep = Preprocessing(32, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3)
    dm = ImageDataModule(
        split, prep, compose_cfg([]).augment.light, micro_batch=5, num_workers=workers, seed=3
    )
    broken = split.train[0][0]
    Path(broken).write_bytes(Path(broken).read_bytes()[:100])  # truncated after the scan
    with caplog.at_level(logging.WARNING, logger="effnet"):
        batches = list(dm.train_dataloader())
    assert sum(len(labels) for _, labels in batches) == 10
    assert all(images.dtype == torch.uint8 for images, _ in batches)
    if workers == 0:  # (a worker process logs to its own stderr)
        assert f"skipped {broken}" in caplog.text


def test_corrupt_data_stops_the_plan_and_a_dropped_class_is_in_it(tmp_path, monkeypatch):
    """What train.py (and its dry run) resolves: a folder of nothing but corrupt .jpg files is
    reported as such (found, unreadable, the first error); a class the scan empties is a plan warning."""
    from effnet import plan

    monkeypatch.chdir(tmp_path)  # the scan cache goes to ./outputs/cache
    corrupt = tmp_path / "corrupt"
    for name in ("a", "b"):
        (corrupt / name).mkdir(parents=True)
        for i in range(13):
            (corrupt / name / f"{i:03d}.jpg").write_bytes(_jpeg_bytes(i)[:600])  # cut downloads
    cfg = compose_cfg([f"data.root={corrupt}", "trainer.accelerator=cpu", "model.pretrained=false"])
    with pytest.raises(UserError) as raised:
        plan.resolve(cfg)
    assert str(raised.value) == (
        f"data.root={corrupt}: no usable images in {corrupt}/<class>/: found 26 image file(s), all 26 unreadable "
        f"(first: {corrupt}/a/000.jpg: truncated or corrupt: Truncated File Read); fix or replace them"
    )

    make_images(corrupt, {"c": 4, "d": 4})
    resolved, split, _ = plan.resolve(cfg)
    assert split.classes == ["c", "d"]
    warnings = [
        value for key, value in plan.plan_rows(resolved) if key == "warning" and value.startswith("class ")
    ]
    assert [w.split(",")[0] for w in warnings] == [
        "class a left out: none of its 13 image file(s) is usable",
        "class b left out: none of its 13 image file(s) is usable",
    ]
