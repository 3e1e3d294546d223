import csv
import json

from effnet.files import temporary, write_csv, write_json


def test_json_and_csv_land_whole_with_no_temporary_left(tmp_path):
    write_json(tmp_path / "a.json", {"best": 0.5, "path": tmp_path})
    rows = [{"class": "ant", "f1": "0.5"}, {"class": "bee", "f1": "1.0"}]
    write_csv(tmp_path / "a.csv", rows)
    assert json.loads((tmp_path / "a.json").read_text()) == {"best": 0.5, "path": str(tmp_path)}
    with open(tmp_path / "a.csv", newline="") as f:
        assert list(csv.DictReader(f)) == rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "a.json"]


def test_header_given_when_rows_are_empty(tmp_path):
    write_csv(tmp_path / "m.csv", [], fields=["epoch", "val/acc"])
    assert (tmp_path / "m.csv").read_text().splitlines() == ["epoch,val/acc"]


def test_temporary_names_differ_per_file_and_stay_beside_it(tmp_path):
    a, b = temporary(tmp_path / "x.json"), temporary(tmp_path / "x.csv")
    assert a != b and a.parent == b.parent == tmp_path
