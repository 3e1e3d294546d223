"""A run folder is one run. Real train.py processes against a real finished run: a resume must be
that run (else one line, and the folder is left exactly as it was), a moved data folder is
followed, a finished run is left alone, a fresh run never moves into a folder holding a run, and
one process at a time writes a folder, with no lock left behind by a killed one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from effnet import run_claim
from tests.helpers import FAST, TRAIN_PY, make_images, metric_rows, one_error_line, run_train, tree

# Two training batches and one validation batch per epoch: a run of seconds.
ARGS = [
    *FAST,
    "model=mobilenetv3_small",
    "aug=light",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
]


def with_(args: list[str], *changes: str) -> list[str]:
    """`args` with each `key=value` of `changes` in place of the same key's."""
    keys = {c.split("=", 1)[0] for c in changes}
    return [a for a in args if a.split("=", 1)[0] not in keys] + list(changes)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """(data, run folder, the arguments that trained it): one epoch, done."""
    base = tmp_path_factory.mktemp("finished")
    data = make_images(base / "data", {"ant": 6, "bee": 6, "wasp": 6})
    run = base / "run"
    args = [f"data.root={data}", *ARGS]
    result = run_train([*args, f"hydra.run.dir={run}"], cwd=base)
    assert result.returncode == 0, result.stderr[-3000:]
    return data, run, args


def copy_run(run: Path, data: Path, to: Path) -> tuple[Path, Path]:
    """The run and its data copied under `to`, the run's records naming the copied data: the
    state a run trained on that copy would leave (its checkpoints hold no paths)."""
    new_data, new_run = to / "data", to / "run"
    shutil.copytree(data, new_data)
    shutil.copytree(run, new_run, ignore=shutil.ignore_patterns(run_claim.LOCK_FILE))
    for name in ("split.json", run_claim.IDENTITY_FILE):
        path = new_run / name
        path.write_text(path.read_text().replace(str(data), str(new_data)))
    return new_data, new_run


def test_a_run_folder_records_what_it_is_a_run_of(finished):
    data, run, _ = finished
    assert json.loads((run / run_claim.IDENTITY_FILE).read_text()) == {
        "data_root": str(data),
        "classes": ["ant", "bee", "wasp"],
        "model": "mobilenetv3_small_100",
        "image_size": 32,
        "head": [],
    }


def test_a_resume_of_a_finished_run_says_so_and_changes_nothing(finished, tmp_path):
    _, run, args = finished
    before = tree(run)
    result = run_train([*args, f"ckpt_path={run}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"effnet: {run} has finished: 1 of epochs=1 done" in result.stderr
    assert tree(run) == before and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "change, message",
    [
        (["data.root={other}"], "the run trained on data.root={data}, not {other}"),
        (["model=b0"], "(model mobilenetv3_small_100 -> efficientnet_b0)"),
        (["image_size=48"], "(image_size 32 -> 48)"),
        (["model.head.hidden=[8]"], "(head none -> 8)"),
    ],
    ids=["other data", "other model", "other image size", "other head"],
)
def test_a_resume_that_is_another_run_is_refused_before_anything_is_written(
    finished, change, message, tmp_path
):
    data, run, args = finished
    other = make_images(tmp_path / "other", {"cat": 3, "dog": 3})
    work = tmp_path / "work"
    work.mkdir()
    before = tree(run)
    fill = {"other": other, "data": data}
    result = run_train(with_(args, *[c.format(**fill) for c in change], f"ckpt_path={run}"), cwd=work)
    assert result.returncode == 2, result.stderr[-3000:]
    assert message.format(**fill) in one_error_line(result)
    assert tree(run) == before, "the run folder is left as it was"
    assert list(work.iterdir()) == []


def test_a_run_from_before_run_json_is_checked_from_its_split_and_plan(finished, tmp_path):
    data, run, args = finished
    copy_data, copy = copy_run(run, data, tmp_path)
    (copy / run_claim.IDENTITY_FILE).unlink()
    result = run_train(with_(args, f"data.root={copy_data}", "model=b0", f"ckpt_path={copy}"), cwd=tmp_path)
    assert result.returncode == 2
    assert (
        "(model mobilenetv3_small_100 -> efficientnet_b0); resume with the run's own settings (resolved.yaml"
        in (one_error_line(result))
    )


def test_a_class_added_to_the_data_is_refused_on_resume(finished, tmp_path):
    data, run, args = finished
    copy_data, copy = copy_run(run, data, tmp_path)
    make_images(copy_data, {"zebra": 2})
    before = tree(copy)
    result = run_train(with_(args, f"data.root={copy_data}", f"ckpt_path={copy}"), cwd=tmp_path)
    assert result.returncode == 2
    assert "(classes ant,bee,wasp -> ant,bee,wasp,zebra)" in one_error_line(result)
    assert tree(copy) == before


def test_a_moved_data_folder_is_followed_and_a_stranger_is_not(finished, tmp_path):
    data, run, args = finished
    old_data, copy = copy_run(run, data, tmp_path)
    lookalike = make_images(tmp_path / "lookalike", {"ant": 6, "bee": 6, "wasp": 6})
    for image in lookalike.rglob("*.png"):
        image.rename(image.with_name("other_" + image.name))
    new_data = old_data.rename(tmp_path / "moved")

    before = tree(copy)
    gone = run_train(with_(args, f"data.root={old_data}", f"ckpt_path={copy}"), cwd=tmp_path)
    assert gone.returncode == 2
    assert "if the run's data folder moved, resume with data.root=<where it is now>" in one_error_line(gone)
    stranger = run_train(with_(args, f"data.root={lookalike}", f"ckpt_path={copy}"), cwd=tmp_path)
    assert stranger.returncode == 2
    assert f"data.root={lookalike} holds none of the run's 18 images" in one_error_line(stranger)
    assert tree(copy) == before

    result = run_train(with_(args, f"data.root={new_data}", "epochs=2", f"ckpt_path={copy}"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"the data folder moved from {old_data} to {new_data}" in result.stderr
    split = json.loads((copy / "split.json").read_text())
    paths = [p for key in ("train", "val") for p, _ in split[key]]
    assert split["root"] == str(new_data) and len(paths) == 18 and all(Path(p).is_file() for p in paths)
    assert json.loads((copy / run_claim.IDENTITY_FILE).read_text())["data_root"] == str(new_data)
    assert [r["epoch"] for r in metric_rows(copy, "val/acc")] == ["0", "1"]
    assert "skipped" not in result.stdout + result.stderr, "no image went missing"


def test_a_fresh_run_into_a_folder_holding_a_run_is_refused(finished, tmp_path):
    _, run, args = finished
    before = tree(run)
    result = run_train([*args, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert result.returncode == 2
    assert one_error_line(result) == (
        f"{run} already holds a run (checkpoints/last.ckpt); resume it with ckpt_path={run}, "
        "or give the new run another folder"
    )
    assert tree(run) == before and list(tmp_path.iterdir()) == []


def test_one_run_at_a_time_per_folder_and_a_killed_run_leaves_no_lock(tmp_path):
    """The first run stalls writing its first checkpoint (the test hook of checkpoints/write.py);
    a second one on its folder is refused. Once the first is killed, a new run starts there, on
    its own data: the folder held no checkpoint, so there was nothing to keep, and nothing of it
    (its split) is adopted."""
    data = make_images(tmp_path / "data", {"ant": 6, "bee": 6})
    other = make_images(tmp_path / "other", {"cat": 6, "dog": 6})
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, str(TRAIN_PY), f"data.root={data}", *ARGS, f"hydra.run.dir={run}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "EFFNET_CKPT_WRITE_DELAY_S": "600"},
    )
    try:
        deadline = time.monotonic() + 240  # start-up, the data scan, the first checkpoint: generous
        while not (run / "checkpoints" / "last.ckpt.tmp").exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.2)
        second = run_train([f"data.root={data}", *ARGS, f"hydra.run.dir={run}"], cwd=tmp_path)
        assert second.returncode == 2
        assert one_error_line(second).startswith(f"{run} is in use by another run (pid {first.pid} on ")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    third = run_train([f"data.root={other}", *ARGS, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert json.loads((run / "split.json").read_text())["classes"] == ["cat", "dog"]
    assert json.loads((run / "summary.json").read_text())["classes"] == ["cat", "dog"]
