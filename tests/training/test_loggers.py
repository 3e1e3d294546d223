"""What one run shows a person: the W&B run as it was written offline, and the same pictures on disk."""

import csv
import json
import math

import pytest
from omegaconf import OmegaConf
from PIL import Image

from effnet.training.loggers import RECIPE_KEYS, has_wandb_key, wandb_mode
from tests.helpers import FAST, compose_cfg, make_images, start_and_run
from tests.wandb_records import offline_runs

CLASSES = {"ant": 6, "bee": 6, "wasp": 6, "fly": 6, "moth": 6}  # 5 classes: top-5 is logged too
EPOCHS = 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 2-epoch run with the CSV, W&B (offline) and TensorBoard loggers, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("dashboards")
    root = make_images(tmp / "data", CLASSES)
    overrides = [
        f"data.root={root}",
        *FAST,
        f"epochs={EPOCHS}",
        "model=mobilenetv3_small",
        "logger=[csv,wandb,tensorboard]",
        "dashboards.train_batch=16",  # train_batches.png, which FAST leaves out
    ]
    overrides.append("trainer.log_every_n_steps=1")
    cfg = compose_cfg(overrides)
    summary = start_and_run(cfg, tmp / "run")
    (wandb_run,) = offline_runs(tmp / "run")
    return cfg, summary, tmp / "run", wandb_run


def test_wandb_config_is_the_composed_config_with_the_recipe_values(trained):
    cfg, summary, _, wandb_run = trained
    expected = OmegaConf.to_container(cfg, resolve=True)
    for key, value in expected.items():
        if key in RECIPE_KEYS and value is None:  # the recipe chose it: W&B shows what was used
            assert wandb_run.config[key] == summary[key], key
        else:
            assert wandb_run.config[key] == value, key
    assert wandb_run.config["resolved"]["num_val_images"] == summary["num_val_images"]
    assert wandb_run.config["facts"]["parameters"] == summary["parameters"]
    assert wandb_run.config["system"]["precision"] == "32-true"
    assert wandb_run.run.job_type == "train" and wandb_run.run.display_name == "run"
    assert wandb_run.exit_code == 0


def test_wandb_history_has_every_epoch_metric_and_per_step_loss_and_lr(trained):
    *_, wandb_run = trained
    per_epoch = [
        "train/loss_epoch",
        "train/acc",
        "train/images_per_sec",
        "val/loss",
        "val/acc",
        "val/acc5",
        "val/f1",
    ]
    for key in per_epoch:
        epochs = sorted(row["epoch"] for row in wandb_run.history if key in row)
        assert epochs == list(range(EPOCHS)), key
    steps = EPOCHS * 24 // 4  # 24 training images in batches of 4; trainer.log_every_n_steps=1
    lr_steps = {
        row["trainer/global_step"] for row in wandb_run.history if any(k.startswith("lr-") for k in row)
    }
    loss_steps = {row["trainer/global_step"] for row in wandb_run.history if "train/loss_step" in row}
    assert len(lr_steps) == len(loss_steps) == steps


def test_wandb_confusion_matrix_table_counts_every_val_image(trained):
    _, summary, _, wandb_run = trained
    tables = [
        row["val/confusion_matrix_table"] for row in wandb_run.history if "val/confusion_matrix_table" in row
    ]
    assert tables and tables[-1]["_type"] == "table-file"
    table = json.loads(wandb_run.media(tables[-1]).read_text())
    assert table["columns"] == ["Actual", "Predicted", "nPredictions"]
    assert len(table["data"]) == len(CLASSES) ** 2
    assert {actual for actual, _, _ in table["data"]} == set(CLASSES)
    assert sum(count for *_, count in table["data"]) == summary["num_val_images"]
    # the chart that draws it is wandb's own confusion-matrix panel
    assert "val/confusion_matrix" in json.dumps(wandb_run.config["_wandb"]["visualize"])


def test_wandb_predictions_image_and_per_class_table(trained):
    _, summary, run_dir, wandb_run = trained
    (image,) = [row["val/predictions"] for row in wandb_run.history if "val/predictions" in row][-1:]
    assert image["_type"] == "image-file"
    with Image.open(wandb_run.media(image)) as uploaded, Image.open(run_dir / "predictions.png") as on_disk:
        assert uploaded.size == on_disk.size == (image["width"], image["height"])
    per_class = [row["val/per_class"] for row in wandb_run.history if "val/per_class" in row][-1]
    table = json.loads(wandb_run.media(per_class).read_text())
    assert table["columns"] == ["class", "precision", "recall", "f1", "support"]
    assert sum(row[-1] for row in table["data"]) == summary["num_val_images"]


def test_wandb_summary_holds_the_best_val_top1_and_its_epoch(trained):
    _, summary, _, wandb_run = trained
    assert wandb_run.summary["best_val_acc"] == pytest.approx(summary["best_val_acc"])
    assert wandb_run.summary["best_epoch"] == summary["best_epoch"]
    assert wandb_run.summary["model/parameters"] == summary["parameters"]
    assert summary["model_size_mb"] > 0 and summary["gflops"] > 0
    assert summary["best_val_f1"] is not None and 0 <= summary["best_val_f1"] <= 1


def png_size(path):
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_run_folder_has_the_same_pictures(trained):
    _, summary, run_dir, _ = trained
    n = len(CLASSES)
    side = min(4 + 0.45 * n, 14)  # plots.confusion_matrix_png: two square panels and colour bars
    assert png_size(run_dir / "confusion_matrix.png") == (round((2 * side + 1) * 100), round(side * 100))
    shown = min(16, summary["num_val_images"])  # dashboards.samples=16
    columns = min(8, shown)
    assert png_size(run_dir / "predictions.png") == (200 * columns, 230 * math.ceil(shown / columns))
    assert png_size(run_dir / "curves.png") == (1500, 400)
    with open(run_dir / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == sorted(CLASSES)
    assert sum(int(r["support"]) for r in rows) == summary["num_val_images"]
    with open(run_dir / "metrics.csv") as f:
        assert {"val/f1", "train/acc", "val/acc5"} <= set(next(csv.reader(f)))


def test_a_failed_run_still_finishes_its_wandb_run(flat_folder, tmp_path):
    import wandb

    # Lightning rejects this only once fit() has started, after the W&B run was created
    cfg = compose_cfg([f"data.root={flat_folder}", *FAST, "logger=wandb", "+trainer.val_check_interval=1000"])
    with pytest.raises(ValueError, match="val_check_interval"):
        start_and_run(cfg, tmp_path / "run")
    assert wandb.run is None, "the next run of a sweep must not reuse this one"
    (failed,) = offline_runs(tmp_path / "run")
    assert failed.exit_code == 1


def test_wandb_goes_offline_without_a_key_or_a_server(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    assert wandb_mode({"WANDB_MODE": "disabled", "HOME": str(home)}) == ("disabled", "WANDB_MODE=disabled")
    mode, why = wandb_mode({"HOME": str(home)})
    assert mode == "offline" and "no W&B API key" in why
    (home / ".netrc").write_text("machine api.wandb.ai login user password " + "x" * 40 + "\n")
    assert has_wandb_key(environ={"HOME": str(home)})
    assert not has_wandb_key("https://wandb.example.org", environ={"HOME": str(home)})
    # a key, but nothing listens on the server's port: offline at once, not after minutes of retries
    mode, why = wandb_mode(
        {"HOME": str(home), "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}
    )
    assert mode == "offline" and "unreachable" in why


def test_tensorboard_gets_the_same_pictures_and_tables(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, summary, run_dir, _ = trained
    events = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"images": 0, "tensors": 0}
    ).Reload()
    images = events.Tags()["images"]
    assert {"val/predictions", "val/confusion_matrix_image"} <= set(images)
    (grid,) = events.Images("val/predictions")[-1:]
    with Image.open(run_dir / "predictions.png") as on_disk:
        assert (grid.width, grid.height) == on_disk.size
    assert "val/per_class/text_summary" in events.Tags()["tensors"]  # how add_text stores it
    assert events.Scalars("best_val_acc")[-1].value == pytest.approx(summary["best_val_acc"])


def test_the_first_training_batch_is_in_the_run_folder_and_on_wandb(trained):
    _, _, run_dir, wandb_run = trained
    (image,) = [row["train/batch"] for row in wandb_run.history if "train/batch" in row]  # drawn once
    with Image.open(wandb_run.media(image)) as uploaded, Image.open(run_dir / "train_batches.png") as on_disk:
        # batch_size=4 images, under dashboards.train_batch=16: one row of 4 tiles (plots.batch_png)
        assert uploaded.size == on_disk.size == (4 * 200, 230)
