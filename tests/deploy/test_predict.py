"""predict.py: top-k for a folder, unreadable files listed and skipped, same answers from the ONNX bundle."""

import csv
import io
import json
import shutil

import numpy as np
import pytest

from effnet.deploy import predict
from effnet.errors import UserError
from tests.helpers import compose_cfg, make_images, run_script


@pytest.fixture
def inbox(tmp_path):
    """Five good images in nested class folders, a truncated PNG and a text file."""
    folder = make_images(tmp_path / "inbox", {"a": 3, "b": 2}, size=40, seed=7)
    good = sorted(p.read_bytes() for p in folder.rglob("*.png"))
    (folder / "broken.png").write_bytes(good[0][:60])
    (folder / "notes.txt").write_text("not an image\n")
    (folder / ".hidden.png").write_bytes(good[0])  # hidden files are not inputs
    return folder


def test_predict_lists_unreadable_files_and_predicts_the_rest(trained_run, inbox, tmp_path):
    out = tmp_path / "preds.csv"
    result = run_script(
        "predict.py",
        [f"ckpt={trained_run}", f"inputs={inbox}", "topk=2", f"out={out}", "num_workers=0"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 and list(rows[0]) == ["path", "label1", "prob1", "label2", "prob2", "error"]
    bad = {r["path"].rsplit("/", 1)[-1]: r["error"] for r in rows if r["error"]}
    assert set(bad) == {"broken.png", "notes.txt"}
    assert "UnidentifiedImageError" in bad["notes.txt"]
    for name in bad:
        assert f"skipped {inbox / name}" in result.stderr
    assert "predicted 5 image(s)" in result.stderr and "skipped 2" in result.stderr
    for r in rows:
        if not r["error"]:
            assert r["label1"] in ("ant", "bee", "wasp") and r["label2"] not in ("", r["label1"])
            assert 1 >= float(r["prob1"]) >= float(r["prob2"]) >= 0


def test_predict_with_the_onnx_bundle_agrees_with_the_checkpoint(trained_run, onnx_bundle, inbox):
    paths = predict.expand_inputs(str(inbox))
    ckpt = predict.load_predictor(str(trained_run))
    fp32 = predict.load_predictor(str(onnx_bundle / "model.onnx"))
    assert predict.load_predictor(str(onnx_bundle)).name == "onnx int8"  # a bundle serves its int8 model
    assert (fp32.classes, fp32.prep) == (ckpt.classes, ckpt.prep)  # preprocessing.json round-trips
    reference, skipped = predict.infer(ckpt, paths)
    exported, skipped_too = predict.infer(fp32, paths)
    assert skipped == skipped_too and len(skipped) == 2
    ok = [i for i in range(len(paths)) if i not in skipped]
    assert np.abs(reference[ok] - exported[ok]).max() <= 1e-4
    assert (reference[ok].argmax(1) == exported[ok].argmax(1)).all()


def test_predict_json_and_stdout(trained_run, inbox, tmp_path, capsys):
    base = [f"ckpt={trained_run}", f"inputs={inbox}/a/*.png", "num_workers=0", "topk=5"]
    predict.predict(compose_cfg(config_name="predict", overrides=[*base, f"out={tmp_path / 'p.json'}"]))
    results = json.loads((tmp_path / "p.json").read_text())
    assert [r["path"].rsplit("/", 1)[-1] for r in results] == ["000.png", "001.png", "002.png"]
    assert all(len(r["predictions"]) == 3 for r in results)  # topk is capped at the number of classes
    assert all(sum(p["probability"] for p in r["predictions"]) == pytest.approx(1) for r in results)

    capsys.readouterr()
    predict.predict(compose_cfg(config_name="predict", overrides=[*base, "out=-"]))
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["label1"] for r in rows] == [r["predictions"][0]["label"] for r in results]


def test_predict_fails_only_when_nothing_is_readable(trained_run, inbox, tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    shutil.copy(inbox / "notes.txt", junk)
    with pytest.raises(UserError, match="none of the 1 files could be read"):
        predict.predict(
            compose_cfg(
                config_name="predict",
                overrides=[f"ckpt={trained_run}", f"inputs={junk}", f"out={tmp_path / 'x.csv'}"],
            )
        )
    assert not (tmp_path / "x.csv").exists()
    result = run_script("predict.py", [f"ckpt={trained_run}", f"inputs={tmp_path}/*.jpeg"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"effnet: error: inputs={tmp_path}/*.jpeg: no files found; pass an image, a folder or a quoted glob "
        "like 'photos/*.jpg'"
    ]
