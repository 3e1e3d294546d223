"""The sweep report from job folders as Hydra and effnet leave them: overrides, summary.json, error.txt,
pruned.txt."""

import csv
import json
import subprocess
import sys

import pytest
import yaml
from PIL import Image

from effnet.errors import UserError
from effnet.report import swept_params, write_report

JOBS = {  # job: (overrides, best_val_acc or an error)
    "0": (["lr=0.0005", "model=b0", "data.root=/data"], 0.71),
    "1": (["lr=0.001", "model=b0", "data.root=/data"], 0.83),
    "2": (["lr=0.0005", "model=mobilenetv3_small", "data.root=/data"], "CUDA out of memory"),
    "3": (["lr=0.001", "model=mobilenetv3_small", "data.root=/data"], 0.64),
}


@pytest.fixture
def sweep(tmp_path):
    folder = tmp_path / "2025-01-31_12-00-00"
    for job, (overrides, result) in JOBS.items():
        (folder / job / ".hydra").mkdir(parents=True)
        (folder / job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        if isinstance(result, str):
            (folder / job / "error.txt").write_text(result + "\n")
        else:
            summary = {
                "best_val_acc": result,
                "best_epoch": 3,
                "wall_time_s": 100 * result,
                "best_checkpoint": "x",
            }
            (folder / job / "summary.json").write_text(json.dumps(summary))
    (folder / "4" / ".hydra").mkdir(parents=True)  # a job that is still running
    (folder / "4" / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(["lr=0.002", "model=b0", "data.root=/data"])
    )
    return folder


def test_jobs_are_ranked_best_first_and_the_best_is_marked(sweep):
    report = write_report(sweep)
    assert report["params"] == ["lr", "model"]  # data.root is the same in every job
    rows = report["rows"]
    assert [r["job"] for r in rows] == ["1", "0", "3", "2", "4"]
    assert [r["rank"] for r in rows] == [1, 2, 3, "", ""]
    assert [r["best"] for r in rows] == ["★", "", "", "", ""]
    assert rows[0]["lr"] == 0.001 and rows[0]["model"] == "b0"
    assert rows[3]["status"] == "failed: CUDA out of memory" and rows[4]["status"] == "unfinished"
    assert "Best: job 1 (lr=0.001, model=b0): best_val_acc 0.83" in report["text"]
    with open(report["csv"]) as f:
        assert [r["job"] for r in csv.DictReader(f)] == ["1", "0", "3", "2", "4"]
    assert report["markdown"].read_text().count("\n| ") == 6  # header + 5 jobs
    with Image.open(report["plot"]) as plot:
        assert plot.format == "PNG" and plot.size == (900, 380)  # one 4.5-inch panel per swept parameter


def test_minimize_ranks_the_lowest_first(sweep):
    rows = write_report(sweep, metric="wall_time_s", minimize=True)["rows"]
    assert [r["job"] for r in rows][:3] == ["3", "0", "1"]


def test_a_pruned_trial_comes_after_the_finished_jobs_and_is_never_the_best(sweep):
    """An Optuna trial its pruner stopped has a summary.json (of fewer epochs) and pruned.txt."""
    pruned = sweep / "0" / "pruned.txt"
    pruned.write_text("pruned after epoch 1 of 3 by MedianPruner (val/acc 0.7100)\n")
    rows = write_report(sweep)["rows"]
    assert [r["job"] for r in rows] == ["1", "3", "0", "2", "4"]
    assert rows[2]["status"] == "pruned after epoch 1 of 3 by MedianPruner (val/acc 0.7100)"
    for name in ("3", "1"):  # only pruned trials left: none is the best
        (sweep / name / "pruned.txt").write_text("pruned\n")
    report = write_report(sweep)
    assert report["best"] is None and "★" not in [r["best"] for r in report["rows"]]


def test_a_single_job_reports_all_its_overrides(sweep):
    jobs = [{"overrides": {"lr": 0.1, "model": "b0"}}]
    assert swept_params(jobs) == ["lr", "model"]


def test_not_a_sweep_folder_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no job folders"):
        write_report(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "effnet.report", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"effnet: error: {tmp_path / 'nope'}: folder not found; " + (
        "pass a sweep folder such as outputs/multirun/<date_time>"
    )


def test_the_report_command_does_not_import_torch():
    code = "import sys, effnet.report; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_sweep_on_val_loss_is_ranked_by_its_loss_lowest_first(sweep):
    for job, loss in (("0", 0.40), ("1", 0.55), ("3", 0.30)):
        summary_file = sweep / job / "summary.json"
        summary = json.loads(summary_file.read_text())
        summary.update(monitor="val/loss", monitor_mode="min", best_monitor_value=loss)
        summary_file.write_text(json.dumps(summary))
    report = write_report(sweep)
    assert [r["job"] for r in report["rows"]][:3] == ["3", "0", "1"], "what the sweeper minimised"
    assert "ranked by best_monitor_value" in report["text"] and "best_monitor_value 0.3" in report["text"]
    # asked for explicitly, top-1 still ranks as before
    assert [r["job"] for r in write_report(sweep, "best_val_acc")["rows"]][:3] == ["1", "0", "3"]
