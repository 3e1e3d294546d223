import json

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
