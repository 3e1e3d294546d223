"""Real training runs on tiny synthetic folders: what a run writes, resume, precision, options, DDP."""

import csv
import io
import json
import logging

import lightning as L
import pytest
import torch
import yaml

from effnet import memory, plan, recipes
from effnet.training.module import ClassifierModule
from tests.helpers import FAST, compose_cfg, make_images, metric_rows, run_train, start_and_run

SUMMARY_KEYS = {
    "model",
    "image_size",
    "num_classes",
    "num_train_images",
    "num_val_images",
    "epochs",
    "lr",
    "batch_size",
    "micro_batch_size",
    "accumulate_grad_batches",
    "dropout",
    "precision",
    "best_val_acc",
    "best_checkpoint",
    "train_images_per_sec",
}


def test_train_writes_summary_checkpoints_and_metrics(flat_folder, tmp_path, caplog):
    run_dir = tmp_path / "run"
    cfg = compose_cfg([f"data.root={flat_folder}", *FAST, "epochs=2"])
    with caplog.at_level(logging.WARNING, logger="effnet"):
        summary = start_and_run(cfg, run_dir)
    assert "only 18 training images: fewer than the 500 recommended" in caplog.text

    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert set(on_disk) >= SUMMARY_KEYS
    assert on_disk == json.loads(json.dumps(summary, default=str))
    assert (on_disk["num_classes"], on_disk["num_train_images"], on_disk["num_val_images"]) == (3, 18, 6)
    assert (on_disk["epochs"], on_disk["batch_size"], on_disk["micro_batch_size"]) == (2, 4, 4)
    assert on_disk["precision"] == "32-true" and on_disk["epochs_completed"] == 2
    assert 0.0 <= on_disk["best_val_acc"] <= 1.0 and on_disk["train_images_per_sec"] > 0
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (
        run_dir / "checkpoints" / "last.ckpt"
    ).is_file()
    assert on_disk["best_checkpoint"].endswith("checkpoints/best.ckpt")
    assert (run_dir / "split.json").is_file() and (run_dir / "resolved.yaml").is_file()
    assert [r["epoch"] for r in metric_rows(run_dir, "val/acc")] == ["0", "1"]
    # checkpoints load without unpickling arbitrary objects
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["epoch"] == 1 and ckpt["hyper_parameters"]["network"]["classes"] == ["ant", "bee", "wasp"]
    resolved = yaml.safe_load((run_dir / "resolved.yaml").read_text())["resolved"]
    assert {k: on_disk[k] for k in resolved if k in on_disk} == resolved, (
        "summary.json and resolved.yaml agree"
    )
    assert ckpt["hyper_parameters"]["preprocessing"] == on_disk["preprocessing"], (
        "the checkpoint carries the plan"
    )


def test_resume_continues_at_the_next_epoch_in_the_same_folder(flat_folder, tmp_path, caplog):
    run_dir = tmp_path / "run"
    base = [f"data.root={flat_folder}", *FAST]
    start_and_run(compose_cfg([*base, "epochs=1"]), run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)
    split_before = (run_dir / "split.json").read_text()

    with caplog.at_level(logging.WARNING, logger="effnet"):
        summary = start_and_run(compose_cfg([*base, "epochs=2", f"ckpt_path={last}"]), run_dir)
    assert "schedule was built for 1 epochs" in caplog.text, "a changed epochs= is not silently ignored"
    second = torch.load(last, weights_only=True)
    assert summary["epochs_completed"] == 2 and summary["resumed_from"] == str(last)
    assert second["epoch"] == 1 and second["global_step"] == 2 * first["global_step"]
    assert second["optimizer_states"][0]["state"], "optimizer state carried over"
    assert [r["epoch"] for r in metric_rows(run_dir, "val/acc")] == ["0", "1"]
    assert (run_dir / "split.json").read_text() == split_before


@pytest.mark.gpu
def test_one_gpu_trains_the_demo_in_bf16_with_channels_last(tmp_path):
    cfg = compose_cfg(["data=demo", f"data.root={tmp_path / 'demo'}", "epochs=1", "trainer.accelerator=gpu"])
    summary = start_and_run(cfg, tmp_path / "r")
    assert (summary["precision"], summary["channels_last"], summary["devices"]) == ("bf16-mixed", True, 1)
    assert summary["gpu_tier"] != "cpu" and summary["best_val_acc"] is not None
    state = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["net.backbone.conv_stem.weight"].is_contiguous(memory_format=torch.channels_last)


def test_bf16_mixed_runs_on_cpu(flat_folder, tmp_path):
    summary = start_and_run(
        compose_cfg([f"data.root={flat_folder}", *FAST, "trainer.precision=bf16-mixed"]), tmp_path / "r"
    )
    assert summary["precision"] == "bf16-mixed" and summary["best_val_acc"] is not None


def tier_holding(images: float, backbone: str, image_size: int, ema: bool) -> float:
    """gpu.memory_gb of a tier whose checkpointed capacity is `images` (fp32, the CPU's precision)."""
    gpu = compose_cfg([]).gpu
    cost = memory.costs(backbone, "32-true")[True]
    peak = sum(recipes.peak_terms(cost, images, image_size, gpu.cuda_overhead_gb * 1e9, ema).values())
    return round(peak / gpu.usable_fraction / 1e9, 6)


def test_freeze_ema_mixup_accumulation_and_checkpointing(flat_folder, tmp_path):
    overrides = [
        f"data.root={flat_folder}",
        *FAST,
        "batch_size=8",
        "aug=heavy",
        "augment.heavy.mixup=0.2",
        "augment.heavy.cutmix=1.0",
        "model.freeze_epochs=1",
        "model.ema=true",
        "model.head.hidden=[16]",
        "gpu=4gb",
        f"gpu.memory_gb={tier_holding(2.5, 'efficientnet_b0', 32, ema=True)}",  # 2 images fit: forces the plan
    ]
    cfg = compose_cfg(overrides)
    summary = start_and_run(cfg, tmp_path / "r")
    assert (
        summary["micro_batch_size"],
        summary["accumulate_grad_batches"],
        summary["grad_checkpointing"],
    ) == (2, 4, True)

    # With the backbone frozen for the only epoch, it must still hold its initial weights and BN statistics.
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    fresh = ClassifierModule(**plan.resolve(cfg)[0].module_args())
    state = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(state["net.backbone.conv_stem.weight"], fresh.net.backbone.conv_stem.weight)
    assert torch.equal(state["net.backbone.bn1.running_mean"], fresh.net.backbone.bn1.running_mean)
    assert not torch.equal(state["net.head.0.weight"], fresh.net.head[0].weight)
    assert any(k.startswith("ema.") for k in state), "EMA weights are checkpointed"


def test_ddp_two_processes_through_train_py(tmp_path):
    data = tmp_path / "data"  # 7 val images: 2 processes would need a padding repeat to split them evenly
    make_images(data / "train", {"ant": 8, "bee": 8, "wasp": 8})
    make_images(data / "val", {"ant": 3, "bee": 2, "wasp": 2}, seed=1)
    args = [f"data.root={data}", *FAST, "trainer=ddp", "trainer.devices=2", "epochs=2"]
    result = run_train(args, cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dirs = list((tmp_path / "outputs" / "train").iterdir())
    assert len(run_dirs) == 1, run_dirs
    run_dir = run_dirs[0]
    assert len(list(tmp_path.rglob("summary.json"))) == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["devices"], summary["micro_batch_size"], summary["accumulate_grad_batches"]) == (2, 2, 1)
    assert summary["epochs_completed"] == 2
    logs = sorted(p.name for p in run_dir.glob("*.log"))
    assert logs == ["train.log"], "only rank 0 writes a log"
    log = (run_dir / "train.log").read_text()
    assert "epoch 2/2  train/loss_epoch" in log and "effnet run" in log, "the epoch lines and the table"
    assert f"best checkpoint: {summary['best_checkpoint']}" in log.splitlines()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert len(list(run_dir.rglob("*.ckpt"))) == 2  # best + last, once
    # every val image counted once across both processes: no padding repeats in the metrics
    with open(run_dir / "per_class.csv") as f:
        assert sum(int(row["support"]) for row in csv.DictReader(f)) == summary["num_val_images"]


def test_csv_tensorboard_and_offline_wandb_write_into_the_run_folder(flat_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    start_and_run(compose_cfg([f"data.root={flat_folder}", *FAST, "logger=[csv,tensorboard,wandb]"]), run_dir)
    assert metric_rows(run_dir, "val/acc")
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))


# ---- train.monitor, early stopping and the records a person reads: one train.py run, then its resume

WATCHED = [
    *FAST,
    "model=mobilenetv3_small",
    "epochs=4",
    "trainer.limit_train_batches=2",
    "dashboards.samples=0",  # no grid of sample images to draw
    "data.threads=1",  # tests/test_readme.py's SMALL: threads competing for a core wait on each other
    "train.monitor=val/loss",
    "train.early_stopping.min_delta=10",  # only the first epoch counts as an improvement: a stop on cue
]


def read_results(run_dir) -> tuple[list[str], list[dict]]:
    with open(run_dir / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def watched(tmp_path_factory) -> dict:
    """A run stopped early after epoch 2 (patience 1) on a 40-column console, what it logged (the
    lines Hydra's handlers print and write to train.log); then, after a kill that left results.csv
    one row ahead of last.ckpt, the same run resumed with patience 2."""
    base = tmp_path_factory.mktemp("watched")
    data = make_images(base / "data", {"ant": 8, "bee": 8, "wasp": 8})
    args = [f"data.root={data}", *WATCHED]
    run_dir = base / "run"
    logged = io.StringIO()
    handler, effnet_log = logging.StreamHandler(logged), logging.getLogger("effnet")
    level = effnet_log.level
    effnet_log.addHandler(handler)
    effnet_log.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("COLUMNS", "40")
            summary = start_and_run(compose_cfg([*args, "train.early_stopping.patience=1"]), run_dir)
    finally:
        effnet_log.removeHandler(handler)
        effnet_log.setLevel(level)
    # read now: the resume below writes a new best.ckpt at the same path when its epoch is better
    best = torch.load(summary["best_checkpoint"], weights_only=True, map_location="cpu", mmap=True)["epoch"]
    first = {
        "log": logged.getvalue(),
        "summary": summary,
        "results": read_results(run_dir),
        "best_epoch": best,
    }
    assert json.loads((run_dir / "summary.json").read_text()) == json.loads(json.dumps(summary))
    with open(run_dir / "results.csv", "a", newline="") as f:
        f.write("3" + ",-1" * (len(first["results"][0]) - 1) + "\r\n")
    resumed = start_and_run(
        compose_cfg([*args, "train.early_stopping.patience=2", f"ckpt_path={run_dir}"]), run_dir
    )
    return {"run_dir": run_dir, "first": first, "resumed": resumed, "results": read_results(run_dir)}


def test_monitor_val_loss_keeps_the_lowest_loss_epoch(watched):
    summary, (_, rows) = watched["first"]["summary"], watched["first"]["results"]
    losses = {int(r["epoch"]): float(r["val_loss"]) for r in rows}
    lowest = min(losses, key=losses.get)
    assert (summary["monitor"], summary["monitor_mode"], summary["best_epoch"]) == ("val/loss", "min", lowest)
    assert summary["best_monitor_value"] == pytest.approx(losses[lowest], rel=1e-5)
    assert summary["best_val_acc"] == pytest.approx(float(rows[lowest - 1]["val_top1"]), rel=1e-5)
    assert watched["first"]["best_epoch"] == lowest - 1, "best.ckpt holds the lowest-loss epoch"


def test_early_stopping_stops_the_run_and_names_the_epoch_and_the_best_value(watched):
    first = watched["first"]
    best = float(first["results"][1][0]["val_loss"])
    line = f"early stopping after epoch 2: val/loss has not improved on {best:.4f} (epoch 1) for 1 epoch"
    assert first["summary"]["epochs_completed"] == 2 and first["summary"]["stopped_early"] == line
    assert line in first["log"].splitlines()


def test_a_resumed_run_keeps_its_early_stopping_state_and_lists_each_epoch_once(watched):
    best = float(watched["first"]["results"][1][0]["val_loss"])
    assert watched["resumed"]["stopped_early"] == (
        f"early stopping after epoch 3: val/loss has not improved on {best:.4f} (epoch 1) for 2 epochs"
    ), "the wait and the best value came back with the checkpoint; the new patience applies"
    _, rows = watched["results"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[2]["val_loss"]) > 0, "the killed run's row of epoch 3 is replaced"
    assert rows[:2] == watched["first"]["results"][1]
    times = [float(r["wall_time_s"]) for r in rows]
    assert times == sorted(times) and times[0] > 0, "wall time adds up across the resume"


def test_results_csv_has_one_named_column_per_value(watched):
    fields, rows = watched["first"]["results"]
    assert fields == [
        "epoch",
        "train_loss",
        "val_loss",
        "val_top1",
        "val_f1",
        "lr",  # one group: a backbone from scratch trains at the head's lr
        "train_images_per_sec",
        "data_wait_fraction",
        "wall_time_s",
    ], "3 classes: no val_top5"
    assert all(r[f] != "" for r in rows for f in fields)
    assert float(rows[0]["lr"]) > float(rows[1]["lr"]) > 0, "the cosine schedule's lr at each epoch's end"


def test_the_log_has_the_epoch_lines_and_the_final_table(watched):
    log = watched["first"]["log"]
    for expected in (
        "epoch 1/4  train/loss_epoch",
        "epoch 2/4  train/loss_epoch",
        "effnet run",
        "best val/loss",
    ):
        assert expected in log, expected
    assert "…" not in log, "no cell of the table is cut short"


def test_paths_stay_whole_on_a_narrow_console(watched):
    summary = watched["first"]["summary"]
    lines = watched["first"]["log"].splitlines()
    assert f"best checkpoint: {summary['best_checkpoint']}" in lines
    assert f"run folder:      {summary['run_dir']}" in lines
    assert max(len(line) for line in lines if "│" in line) <= 40, "the table fits the console"
    assert len(summary["run_dir"]) > 40, "longer than the console is wide"


def test_a_resume_drops_the_results_rows_of_the_epochs_it_replays(tmp_path):
    from effnet.files import write_csv
    from effnet.training.train import note_resume

    write_csv(tmp_path / "results.csv", [{"epoch": e, "val_loss": 1.0 / e} for e in (1, 2, 3)])
    note_resume(
        plan.Resumed(str(tmp_path / "last.ckpt"), 2, 4, 1.0), 4, tmp_path
    )  # resumes at epoch 3 (1-based)
    assert [int(r["epoch"]) for r in read_results(tmp_path)[1]] == [1, 2]
