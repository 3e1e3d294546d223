"""scripts/make_phone_photos.py: the phone-size bench folder is train/ and val/ class folders of
landscape JPEGs at the asked size, the same for the same seed."""

from __future__ import annotations

import pytest
from PIL import Image

from scripts.make_phone_photos import choose, main
from tests.helpers import make_images


@pytest.fixture
def source(tmp_path):
    """A small hymenoptera-like folder: portrait and landscape photos in train/ and val/."""
    for part, count in (("train", 3), ("val", 2)):
        make_images(tmp_path / "hymenoptera" / part, {"ants": count, "bees": count}, size=30)
    for path in (tmp_path / "hymenoptera").rglob("*.png"):
        Image.open(path).resize((30, 40)).save(path.with_suffix(".jpg"))
        path.unlink()
    return tmp_path / "hymenoptera"


def test_writes_landscape_jpegs_at_the_size_per_part_and_class(source, tmp_path, capsys):
    out = tmp_path / "phone"
    main([str(out), "--source", str(source), "--train", "2", "--val", "1", "--size", "160", "120"])
    written = sorted(out.rglob("*.jpg"))
    assert [p.relative_to(out).parts[:2] for p in written] == [
        ("train", "ants"),
        ("train", "bees"),
        ("val", "ants"),
    ]
    for path in written:
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.size == (160, 120)
    assert "2 train, 1 val photos of 160x120 px, 2 classes" in capsys.readouterr().out


def test_the_choice_is_seeded_and_disjoint(source):
    first = choose(source, 4, 2, seed=0)
    assert first == choose(source, 4, 2, seed=0)
    for name in ("ants", "bees"):
        assert len(first["train"][name]) == 2 and len(first["val"][name]) == 1
        assert not set(first["train"][name]) & set(first["val"][name])
    with pytest.raises(SystemExit, match="class ants has 5 photos"):
        choose(source, 8, 4, seed=0)
