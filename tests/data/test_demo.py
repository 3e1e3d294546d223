"""The synthetic demo data set: deterministic, complete, in the layout a user's folder has."""

from effnet.data import folders
from effnet.data.demo import CLASSES, MARKER, write_demo


def test_demo_data_is_deterministic_and_complete(tmp_path):
    a = write_demo(tmp_path / "a", per_class=3, size=32)
    b = write_demo(tmp_path / "b", per_class=3, size=32)
    assert (a / MARKER).is_file()
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 3 * len(CLASSES)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    split = folders.discover(a, 0.34, 0)
    assert split.classes == sorted(CLASSES)
