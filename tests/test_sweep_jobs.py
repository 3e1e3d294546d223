"""Hydra multirun and Optuna search through train.py, as a user runs them, and the sweep report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from effnet.recipes import AUG_LEVELS
from effnet.report import write_report
from tests.helpers import CONF_DIR, FAST, TRAIN_PY, make_images, run_train, source_path
from tests.wandb_records import offline_runs

TINY = [*FAST, "model=mobilenetv3_small"]


def sweep_dir(cwd: Path) -> Path:
    (folder,) = (cwd / "outputs" / "multirun").iterdir()
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("sweep_data") / "data", {"ant": 6, "bee": 6})


@pytest.fixture(scope="module")
def multirun(data, tmp_path_factory):
    """lr=-1,1e-3,2e-3 with W&B and no account: the first job fails, the other two train."""
    cwd = tmp_path_factory.mktemp("multirun")
    home = cwd / "home"  # no ~/.netrc, no API key, no WANDB_MODE: W&B must decide on offline itself
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", PYTHONPATH=source_path())  # this checkout's src
    args = ["-m", f"data.root={data}", *TINY, "logger=[csv,wandb]", "lr=-1,1e-3,2e-3"]
    result = subprocess.run(
        [sys.executable, str(TRAIN_PY), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    return result, sweep_dir(cwd)


def test_a_failing_job_does_not_stop_the_sweep(multirun):
    result, folder = multirun
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("effnet: error: job 0 (lr=-1) failed: lr=-1: must be a number > 0")
    )
    assert (folder / "0" / "error.txt").read_text().startswith("lr=-1: must be a number > 0")
    assert not (folder / "0" / "summary.json").exists()
    assert all((folder / job / "summary.json").is_file() for job in ("1", "2"))


def test_each_job_is_its_own_wandb_run_in_one_group(multirun):
    result, folder = multirun
    runs = offline_runs(folder)
    assert len(runs) == 2
    assert len({r.run.run_id for r in runs}) == 2
    assert {r.run.run_group for r in runs} == {folder.name}
    assert sorted(r.run.display_name for r in runs) == ["lr=0.001", "lr=0.002"]
    assert {r.run.job_type for r in runs} == {"train"} and {r.exit_code for r in runs} == {0}
    assert sorted(r.config["lr"] for r in runs) == [0.001, 0.002]
    synced = [line for line in result.stdout.splitlines() if "wandb sync" in line]
    assert len(synced) == 2 and all("no W&B API key" in line for line in synced)


def test_report_ranks_the_finished_jobs_and_lists_the_failed_one(multirun):
    _, folder = multirun
    report = write_report(folder)
    assert report["params"] == ["lr"]
    ranked = [row["job"] for row in report["rows"]]
    scores = {
        job: json.loads((folder / job / "summary.json").read_text())["best_val_acc"] for job in ("1", "2")
    }
    assert ranked[:2] == sorted(scores, key=scores.get, reverse=True) and ranked[2] == "0"
    assert report["rows"][0]["best"] == "★" and report["rows"][2]["status"].startswith("failed: lr=-1")
    assert report["markdown"].read_text() == report["text"]
    assert report["plot"].stat().st_size > 0 and report["csv"].read_text().count("\n") == 4


def test_fail_fast_stops_at_the_first_failing_job(data, tmp_path):
    result = run_train(["-m", f"data.root={data}", *TINY, "lr=-1,1e-3", "sweep.fail_fast=true"], tmp_path)
    assert result.returncode == 2
    assert "stopped the sweep (sweep.fail_fast=true)" in result.stderr
    assert sorted(p.name for p in sweep_dir(tmp_path).iterdir() if p.is_dir()) == ["0"]


def test_optuna_search_of_three_trials_is_ranked_by_the_report(data, tmp_path):
    args = ["sweep=optuna", f"data.root={data}", *TINY, "hydra.sweeper.n_trials=3", "batch_size=choice(4,8)"]
    args += ["hydra.sweeper.n_jobs=2"]  # two batches through the launcher: trials 0 and 1, then 2
    result = run_train(args, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    folder = sweep_dir(tmp_path)
    summaries = [json.loads((folder / str(i) / "summary.json").read_text()) for i in range(3)]
    optuna = yaml.safe_load((folder / "optimization_results.yaml").read_text())
    assert optuna["best_value"] == pytest.approx(max(s["best_val_acc"] for s in summaries))
    report = write_report(folder)
    scores = [row["best_val_acc"] for row in report["rows"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert {"lr", "dropout"} <= set(report["params"])  # sampled from intervals: never the same twice
    assert report["best"]["summary"]["best_val_acc"] == optuna["best_value"]


def compose_sweep(name: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=[f"sweep={name}"], return_hydra_config=True)


def test_optuna_sweep_searches_the_five_knobs_with_the_run_seed():
    cfg = compose_sweep("optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction is None  # train.monitor's
    assert sweeper.sampler.seed == cfg.seed
    assert set(sweeper.params) == {"lr", "dropout", "batch_size", "aug", "model"}
    assert sweeper.params.lr.startswith("tag(log")
    models = sweeper.params.model.removeprefix("choice(").removesuffix(")").split(", ")
    assert all((CONF_DIR / "model" / f"{m}.yaml").is_file() for m in models)
    augs = sweeper.params.aug.removeprefix("choice(").removesuffix(")").split(", ")
    assert set(augs) == set(AUG_LEVELS)


def test_grid_sweep_is_a_multirun_over_existing_options():
    cfg = compose_sweep("grid")
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert set(cfg.hydra.sweeper.params) == {"lr", "dropout", "model"}
    assert all(
        (CONF_DIR / "model" / f"{m}.yaml").is_file() for m in cfg.hydra.sweeper.params.model.split(",")
    )
