"""effnet's Optuna sweeper (effnet.sweeper): the search-space grammar, the study in a real SQLite
file, a sweep killed with SIGKILL and resumed to its full count, and a pruned trial."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from effnet.errors import UserError
from effnet.report import write_report
from effnet.sweeper import objective_direction, parse_search_space, quoted, storage_url
from tests.helpers import CONF_DIR, FAST, WarmEntry, make_images

TINY = [*FAST, "model=mobilenetv3_small"]


# ---- the search space: Hydra's grammar, Hydra's parser, Optuna's distributions


def test_search_space_maps_the_grammar_to_optuna_distributions():
    space = parse_search_space(
        [
            "model=choice(b0,b2)",
            "lr=tag(log,interval(3e-4,1e-2))",
            "dropout=interval(0.1,0.5)",
            "epochs=range(2,11,4)",  # Hydra's range: 2, 6, 10 (the stop is excluded)
            "batch_size=32",
        ]
    )
    assert space.searched == {
        "model": CategoricalDistribution(["b0", "b2"]),
        "lr": FloatDistribution(3e-4, 1e-2, log=True),
        "dropout": FloatDistribution(0.1, 0.5),
        "epochs": IntDistribution(2, 10, step=4),
    }
    assert space.fixed == {"batch_size": "32"}
    params = {"model": "b2", "lr": 1e-3, "dropout": 0.25, "epochs": 6}
    assert space.overrides(params) == ["model=b2", "lr=0.001", "dropout=0.25", "epochs=6", "batch_size=32"]


def test_the_command_line_wins_over_the_params_and_fixes_a_knob():
    params = ["lr=tag(log, interval(1e-4, 3e-3))", "model=choice(b0, b1)", "aug=choice(light, heavy)"]
    space = parse_search_space([*params, "lr=5e-4", "aug=choice(standard)", "data.root=/data/my photos"])
    assert set(space.searched) == {"model", "aug"} and space.searched["aug"] == CategoricalDistribution(
        ["standard"]
    )
    assert space.fixed == {"lr": "5e-4", "data.root": "/data/my photos"}
    assert space.overrides({"model": "b1", "aug": "standard"}) == [  # each key once, where it was last given
        "model=b1",
        "lr=5e-4",
        "aug=standard",
        "data.root=/data/my photos",
    ]


def test_choices_that_are_not_plain_values_go_back_as_override_text():
    space = parse_search_space(["model.head.hidden=choice([],[256])", "name=choice('a b',c)"])
    assert space.searched["model.head.hidden"] == CategoricalDistribution(["[]", "[256]"])
    assert space.overrides({"model.head.hidden": "[256]", "name": "a b"}) == [
        "model.head.hidden=[256]",
        "name=a\\ b",
    ]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr=tag(int, interval(1, 5))", "means nothing to the Optuna sweeper"),
        ("lr=interval(0.5, 0.1)", "needs a < b"),
        ("lr=tag(log, interval(0, 1))", "needs 0 < a < b"),
        ("aug=tag(log, choice(a, b))", "a log scale needs"),
        ("epochs=range(5, 5)", "gives no value"),
    ],
)
def test_a_search_space_optuna_cannot_sample_is_one_line(override, message):
    with pytest.raises(UserError, match=message):
        parse_search_space([override])


def test_storage_defaults_to_a_sqlite_file_in_the_sweep_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        storage_url(None, Path("outputs/multirun/x")) == f"sqlite:///{tmp_path}/outputs/multirun/x/optuna.db"
    )
    # a relative SQLite path is made absolute for jobs that run elsewhere; other URLs pass as given
    assert storage_url("sqlite:///db/optuna.db", Path("x")) == f"sqlite:///{tmp_path}/db/optuna.db"
    assert (tmp_path / "db").is_dir()
    url = "postgresql://me:p%40ss@host:5432/optuna?sslmode=require"
    assert storage_url(url, Path("x")) == url
    with pytest.raises(UserError, match="in-memory database cannot be shared"):
        storage_url("sqlite:///:memory:", Path("x"))
    with pytest.raises(UserError, match="not a database URL"):
        storage_url("outputs/optuna.db", Path("x"))


def test_a_url_passes_to_the_job_intact_as_a_quoted_override():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    url = "mysql://u:it's,(x)=[y]@h/db?a=b&c=d\\"
    (parsed,) = OverridesParser.create().parse_overrides([f"hydra.sweeper.storage={quoted(url)}"])
    assert parsed.value() == url


def test_hydra_sweeper_optuna_is_effnets_own():
    from hydra.core.plugins import Plugins

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):  # as -m hydra/sweeper=optuna
        sweeper = compose("train", ["hydra/sweeper=optuna"], return_hydra_config=True).hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.effnet_sweeper.OptunaSweeper"
    assert sweeper._target_ in Plugins.instance().class_name_to_class  # where Hydra looks for plugins
    assert sweeper.pruner._target_ == "optuna.pruners.MedianPruner" and sweeper.storage is None
    assert sweeper.sampler.seed == 42 and sweeper.params == {} and sweeper.trial is None


def test_the_study_direction_follows_the_monitor_each_job_returns():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        composed = {
            monitor: compose(
                "train", ["hydra/sweeper=optuna", f"train.monitor={monitor}"], return_hydra_config=True
            )
            for monitor in ("val/acc", "val/loss")
        }
    assert composed["val/acc"].hydra.sweeper.direction is None, "null: the monitor decides"
    assert objective_direction(composed["val/acc"], None) == ("maximize", "val/acc")
    assert objective_direction(composed["val/loss"], None) == ("minimize", "val/loss")
    with pytest.raises(
        UserError, match="hydra.sweeper.direction=maximize, but each job returns its best val/loss"
    ):
        objective_direction(composed["val/loss"], "maximize")


# ---- whole sweeps through train.py, with the study in a real SQLite file


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """The sweeps run train.py forked from one interpreter that has imported torch, Lightning and
    timm: each is a process of its own (the killed one for real), without their seconds of imports."""
    runner = WarmEntry(tmp_path_factory.mktemp("warm"), preload=("torch", "lightning", "timm"))
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("sweeper_data") / "data", {"ant": 6, "bee": 6})


def trials(db: Path) -> list[tuple[int, str]]:
    """(number, state) of every trial, read straight from the SQLite file (none before Optuna
    has made its tables)."""
    if not db.is_file():
        return []
    with sqlite3.connect(db, timeout=30) as connection:
        try:
            return connection.execute("SELECT number, state FROM trials ORDER BY number").fetchall()
        except sqlite3.OperationalError:
            return []


def sweep_dirs(cwd: Path) -> list[Path]:
    return sorted((cwd / "outputs" / "multirun").iterdir())


def test_a_killed_sweep_resumes_to_the_full_count(warm, data, tmp_path):
    """SIGKILL while trial 1 trains; the same command again: trial 1 is failed (it counts), and one
    more trial makes the 3 asked for, with parameters the first run did not try."""
    args = [
        "sweep=optuna",
        f"data.root={data}",
        *TINY,
        "hydra.sweeper.storage=sqlite:///optuna.db",  # relative: the sweeper makes it absolute for the jobs
        "hydra.sweeper.n_trials=3",
    ]
    db = tmp_path / "optuna.db"
    first = warm.start("train.py", args, tmp_path, new_session=True)
    try:
        deadline = time.monotonic() + 240
        job_1 = tmp_path / "outputs" / "multirun"  # trial 1's job has started training once its log is there
        while not (trials(db) == [(0, "COMPLETE"), (1, "RUNNING")] and any(job_1.glob("*/1/train.log"))):
            assert first.poll() is None, Path(first.files["stderr"]).read_text()[-3000:]
            assert time.monotonic() < deadline, "trial 1 never started"
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert trials(db) == [(0, "COMPLETE"), (1, "RUNNING")]

    time.sleep(1.1)  # the sweep folder is named by the second it starts
    result = warm.run("train.py", args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trial 1 was left running by a sweep that stopped" in result.stdout  # Hydra logs to stdout
    assert trials(db) == [(0, "COMPLETE"), (1, "FAIL"), (2, "COMPLETE")]

    study = optuna.load_study(study_name="effnet", storage=f"sqlite:///{db}")
    killed = study.trials[1]
    assert "stopped (killed?)" in killed.user_attrs["effnet_error"]
    lrs = [t.params["lr"] for t in study.trials]
    assert len(set(lrs)) == 3  # the resumed sampler does not repeat the first run's draws

    first_dir, second_dir = sweep_dirs(tmp_path)
    assert (first_dir / "0" / "summary.json").is_file()
    assert sorted(p.name for p in second_dir.iterdir() if p.is_dir()) == ["2"]  # job folder <n> = trial <n>
    assert json.loads((second_dir / "2" / "summary.json").read_text())["lr"] == pytest.approx(lrs[2])
    results = yaml.safe_load((second_dir / "optimization_results.yaml").read_text())
    assert results["trials"] == {"complete": 2, "pruned": 0, "failed": 1}
    best = max((study.trials[0], study.trials[2]), key=lambda t: t.value)
    assert results["best_value"] == best.value and results["best_params"] == best.params


def test_a_pruned_trial_is_recorded_as_pruned_not_failed(warm, data, tmp_path):
    """A pruner that prunes every trial at its first report: the 2-epoch job stops after epoch 1,
    says so in its folder, the study records it as PRUNED, and the sweep exits 0."""
    args = [
        "sweep=optuna",
        f"data.root={data}",
        *TINY,
        "epochs=2",
        "hydra.sweeper.n_trials=1",
        "hydra.sweeper.pruner=null",  # then a whole other pruner (assigned, not merged into MedianPruner)
        "hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 2.0}",  # val/acc is < 2
    ]
    result = warm.run("train.py", args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (folder,) = sweep_dirs(tmp_path)
    job = folder / "0"
    assert (
        (job / "pruned.txt").read_text().startswith("pruned after epoch 1 of 2 by ThresholdPruner (val/acc ")
    )
    assert not (job / "error.txt").exists()
    summary = json.loads((job / "summary.json").read_text())
    assert summary["epochs_completed"] == 1 and summary["pruned"].startswith("after epoch 1 of 2")

    study = optuna.load_study(study_name="effnet", storage=f"sqlite:///{folder / 'optuna.db'}")  # the default
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [1]
    assert trial.user_attrs["run_dir"] == str(job.absolute())
    results = yaml.safe_load((folder / "optimization_results.yaml").read_text())
    assert results["trials"] == {"complete": 0, "pruned": 1, "failed": 0} and results["best_value"] is None

    report = write_report(folder)
    assert report["best"] is None and report["rows"][0]["status"].startswith("pruned after epoch 1")
