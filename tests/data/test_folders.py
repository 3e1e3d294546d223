import json
import os
from pathlib import Path

import pytest

from effnet.data import folders
from effnet.errors import UserError
from tests.helpers import make_images


def test_held_out_split_is_stratified_and_seeded(flat_folder):
    split = folders.discover(flat_folder, val_fraction=0.25, seed=3)
    assert split.held_out and split.classes == ["ant", "bee", "wasp"]
    assert folders.class_counts(split.val, split.classes) == {"ant": 2, "bee": 2, "wasp": 2}
    assert len(split.train) == 18
    assert not {p for p, _ in split.train} & {p for p, _ in split.val}
    again = folders.discover(flat_folder, val_fraction=0.25, seed=3)
    other = folders.discover(flat_folder, val_fraction=0.25, seed=4)
    assert again.val == split.val
    assert other.val != split.val


def test_split_round_trips_through_the_run_folder(flat_folder, tmp_path):
    split = folders.discover(flat_folder, 0.25, 0)
    path = folders.save_split(split, tmp_path)
    assert json.loads(path.read_text())["classes"] == ["ant", "bee", "wasp"]
    assert folders.load_split(tmp_path) == split
    assert folders.load_split(tmp_path / "nowhere") is None


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_train_and_val_folders(tmp_path, val_name):
    make_images(tmp_path / "train", {"a": 4, "b": 4})
    make_images(tmp_path / val_name, {"a": 2, "b": 1})
    make_images(tmp_path / "test", {"a": 1, "b": 1})
    split = folders.discover(tmp_path)
    assert not split.held_out
    assert (len(split.train), len(split.val), len(split.test)) == (8, 3, 2)
    assert {label for _, label in split.val} == {0, 1}


def test_train_without_val_folder_is_split(tmp_path):
    make_images(tmp_path / "train", {"a": 5, "b": 5})
    split = folders.discover(tmp_path, val_fraction=0.2)
    assert split.held_out and len(split.val) == 2


def test_val_class_unknown_to_train_is_an_error(tmp_path):
    make_images(tmp_path / "train", {"a": 2, "b": 2})
    make_images(tmp_path / "val", {"a": 1, "zebra": 1})
    with pytest.raises(UserError, match="class folder\\(s\\) zebra have no training images"):
        folders.discover(tmp_path)


def test_empty_or_single_class_folders_are_errors(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="no images found"):
        folders.discover(tmp_path / "empty")
    make_images(tmp_path / "one", {"only": 3})
    with pytest.raises(UserError, match="found one class"):
        folders.discover(tmp_path / "one")
    with pytest.raises(UserError, match="folder not found"):
        folders.discover(tmp_path / "missing")


# Symlinks: each real file counts once and carries one label.


def _reals(samples) -> list[str]:
    return [os.path.realpath(p) for p, _ in samples]


def test_a_link_loop_inside_a_class_is_followed_once(flat_folder):
    (flat_folder / "ant" / "again").symlink_to(flat_folder / "ant")  # ant/again/again/... forever
    split = folders.discover(flat_folder, 0.25, 0)
    everything = split.train + split.val
    assert folders.class_counts(everything, split.classes) == {"ant": 8, "bee": 8, "wasp": 8}
    assert len(set(_reals(everything))) == len(everything) == 24
    skipped = folders.walk(flat_folder).skipped
    assert [
        (Path(s["file"]).relative_to(flat_folder).as_posix(), "followed once" in s["reason"]) for s in skipped
    ] == [("ant/again", True)]


def test_a_class_folder_linking_to_another_class_is_left_out(flat_folder):
    (flat_folder / "zebra").symlink_to(flat_folder / "bee")  # sorts after bee: a real class first
    (flat_folder / "aardvark").symlink_to(flat_folder / "wasp")  # sorts before wasp
    split = folders.discover(flat_folder, 0.25, 0)
    assert split.classes == ["ant", "bee", "wasp"], "links are not classes; the real folders keep theirs"
    reals = _reals(split.train + split.val)
    assert len(reals) == len(set(reals)) == 24, "no image carries two labels"
    assert not set(_reals(split.train)) & set(_reals(split.val)), "nothing leaks from train into val"
    reasons = {Path(s["file"]).name: s["reason"] for s in folders.walk(flat_folder).skipped}
    assert set(reasons) == {"zebra", "aardvark"}
    assert "left out" in reasons["zebra"] and "bee" in reasons["zebra"]


def test_a_file_linked_from_another_class_keeps_its_own_label(flat_folder, tmp_path):
    (flat_folder / "bee" / "stray.png").symlink_to(flat_folder / "ant" / "000.png")
    outside = make_images(tmp_path / "outside", {"x": 1})
    (flat_folder / "ant" / "shared.png").symlink_to(outside / "x" / "000.png")
    (flat_folder / "wasp" / "shared.png").symlink_to(outside / "x" / "000.png")
    split = folders.discover(flat_folder, 0.25, 0)
    label = {os.path.realpath(p): split.classes[y] for p, y in split.train + split.val}
    assert len(label) == len(split.train + split.val) == 25
    assert label[str(flat_folder / "ant" / "000.png")] == "ant"
    assert label[os.path.realpath(outside / "x" / "000.png")] == "ant", (
        "an outside file goes to the first class"
    )
    skipped = {Path(s["file"]).relative_to(flat_folder).as_posix() for s in folders.walk(flat_folder).skipped}
    assert skipped == {"bee/stray.png", "wasp/shared.png"}


def test_val_images_linked_from_train_do_not_leak(split_folder):
    (split_folder / "val" / "ant" / "copy.png").symlink_to(split_folder / "train" / "ant" / "000.png")
    (split_folder / "val" / "bee" / "more").symlink_to(split_folder / "train" / "bee")
    split = folders.discover(split_folder)
    assert not set(_reals(split.train)) & set(_reals(split.val))
    assert (len(split.train), len(split.val)) == (16, 6)


def test_a_data_set_made_of_links_to_elsewhere_is_used_whole(tmp_path):
    store = make_images(tmp_path / "store", {"a": 4, "b": 4})
    root = tmp_path / "root"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for image in (store / name).iterdir():
            (root / name / image.name).symlink_to(image)
    (root / "b_again").symlink_to(store / "b")  # a link to the real folder behind b's links is not b
    split = folders.discover(root, 0.25, 0)
    assert split.classes == ["a", "b"]
    assert len(set(_reals(split.train + split.val))) == len(split.train + split.val) == 8
    skipped = folders.walk(root).skipped
    assert {Path(s["file"]).parent.name for s in skipped} == {"b_again"} and len(skipped) == 4


# Corrupt data is reported as corrupt, not as missing; a class the scan empties is named.


def _corrupt(folder: Path, count: int) -> list[Path]:
    """`count` .jpg files that start like a JPEG and stop there (a cut download)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:03d}.jpg" for i in range(count)]
    for path in paths:
        path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(40))
    return paths


def _scanned(root: Path, tmp_path: Path):
    from effnet.data import scan

    report = scan.scan_folder(str(root), 10**8, workers=2, cache=tmp_path / "scan.json")
    return report, report.bad_files


def test_a_folder_of_corrupt_images_is_reported_as_unreadable_not_missing(tmp_path):
    root = tmp_path / "photos"
    first = _corrupt(root / "a", 13)[0]
    _corrupt(root / "b", 13)
    report, bad = _scanned(root, tmp_path)
    with pytest.raises(UserError) as raised:
        folders.discover(root, exclude=bad)
    assert str(raised.value) == (
        f"data.root={root}: no usable images in {root}/<class>/: found 26 image file(s), all 26 unreadable "
        f"(first: {first}: {bad[str(first)]}); fix or replace them"
    )
    assert bad[str(first)].startswith(("truncated or corrupt", "not an image"))


def test_a_class_whose_files_are_all_unreadable_is_named(tmp_path):
    root = tmp_path / "photos"
    first = _corrupt(root / "a", 13)[0]
    make_images(root, {"b": 4})
    report, bad = _scanned(root, tmp_path)
    with pytest.raises(UserError) as raised:
        folders.discover(root, exclude=bad)
    assert str(raised.value) == (
        f"data.root={root}: found one class (b); a classifier needs at least two; class a was left out: "
        f"all 13 of its image files are unreadable (first: {first}: {bad[str(first)]})"
    )
    # with two classes left the run goes on, and the plan and the log say which class was dropped
    make_images(root, {"c": 4})
    report, bad = _scanned(root, tmp_path)
    assert folders.discover(root, exclude=bad).classes == ["b", "c"]
    assert report.warnings == [
        f"class a left out: none of its 13 image file(s) is usable, e.g. 000.jpg: {bad[str(first)]}"
    ]


def test_other_empty_folders_say_what_they_hold(tmp_path):
    make_images(tmp_path / "loose", {"x": 2})
    for image in (tmp_path / "loose" / "x").iterdir():
        image.rename(tmp_path / "loose" / image.name)
    (tmp_path / "loose" / "x").rmdir()
    with pytest.raises(
        UserError, match=r"2 image file\(s\) lie directly in .*; move them into one subfolder per class"
    ):
        folders.discover(tmp_path / "loose")
    (tmp_path / "heic" / "a").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "heic" / "a" / f"{i}.HEIC").write_bytes(b"x")
    with pytest.raises(
        UserError, match=r"no images found in .*: its 3 file\(s\) have no image extension \(\.heic x3\)"
    ):
        folders.discover(tmp_path / "heic")


def test_class_names_equal_once_unicode_normalised_are_refused(tmp_path):
    composed, decomposed = "caf\u00e9", "cafe\u0301"  # what Linux and macOS keep for the same typed name
    make_images(tmp_path / "flat", {composed: 2, decomposed: 2})
    with pytest.raises(UserError) as raised:
        folders.discover(tmp_path / "flat")
    assert str(raised.value) == (
        f"data.root={tmp_path / 'flat'}: class folders {tmp_path / 'flat' / decomposed} and "
        f"{tmp_path / 'flat' / composed} are the same name once Unicode-normalised (NFC) but differ in bytes "
        "('cafe\\u0301' vs 'caf\\xe9'); rename one so that both are written the same way (or merge them)"
    )
    make_images(tmp_path / "split" / "train", {composed: 2, "tea": 2})
    make_images(tmp_path / "split" / "val", {decomposed: 1, "tea": 1})
    with pytest.raises(
        UserError, match=r"class folders .*/train/caf.* and .*/val/caf.* are the same name once"
    ):
        folders.discover(tmp_path / "split")


def test_class_names_differing_in_case_are_refused_only_where_the_file_system_ignores_case(
    tmp_path, monkeypatch
):
    make_images(tmp_path / "split" / "train", {"Cat": 2, "dog": 2})
    make_images(tmp_path / "split" / "val", {"cat": 1, "dog": 1})
    assert not folders.case_insensitive(
        tmp_path / "split" / "train" / "Cat"
    )  # this file system tells them apart
    with pytest.raises(UserError, match="class folder\\(s\\) cat have no training images"):
        folders.discover(tmp_path / "split")
    # A case-insensitive file system (macOS, Windows; a casefold ext4 folder) cannot be mounted
    # here (the kernel has no CONFIG_UNICODE): its answer is given instead.
    monkeypatch.setattr(folders, "case_insensitive", lambda folder: True)
    with pytest.raises(
        UserError,
        match=r"class folders .*/train/Cat and .*/val/cat differ only in case, which this file system",
    ):
        folders.discover(tmp_path / "split")


def test_unreadable_files_are_left_out_when_data_root_is_relative(tmp_path, monkeypatch):
    """The scan and the split must name files alike: a relative data.root once let every bad file in."""
    monkeypatch.chdir(tmp_path)
    make_images(tmp_path / "photos", {"ant": 4, "bee": 4})
    bad = _corrupt(tmp_path / "photos" / "ant", 2)
    report, unusable = _scanned(Path("photos"), tmp_path)
    assert sorted(unusable) == [str(p) for p in bad]  # absolute, as the split's paths are
    split = folders.discover("photos", exclude=unusable)
    assert not {p for p, _ in split.train + split.val} & {str(p) for p in bad}
    assert len(split.train) + len(split.val) == 8
