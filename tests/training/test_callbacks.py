import logging
import time
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from PIL import Image

from effnet.training.callbacks import (
    BATCH_FILE,
    BatchPreview,
    BestEpoch,
    EarlyStop,
    FreezeBackbone,
    Throughput,
    group_lrs,
    results_rows,
)
from effnet.training.module import ClassifierModule
from tests.helpers import module_sections


def test_backbone_trains_again_after_the_frozen_epochs():
    module = ClassifierModule(**module_sections())
    freeze = FreezeBackbone(epochs=1)
    freeze.on_train_epoch_start(SimpleNamespace(current_epoch=0), module)
    freeze.on_train_batch_start(SimpleNamespace(current_epoch=0), module, None, 0)
    backbone = module.net.backbone
    assert not backbone.training and not any(p.requires_grad for p in backbone.parameters())
    freeze.on_train_epoch_start(SimpleNamespace(current_epoch=1), module)
    assert backbone.training, "batch norm statistics and drop-path must work again after unfreezing"
    assert all(p.requires_grad for p in backbone.parameters())


class _Sleepy(torch.utils.data.Dataset):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i):
        time.sleep(self.seconds)
        return torch.zeros(2), 0


class _Model(L.LightningModule):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.layer, self.seconds = torch.nn.Linear(2, 2), seconds

    def training_step(self, batch, batch_idx):
        time.sleep(self.seconds)
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def quiet_trainer(**kwargs) -> L.Trainer:
    """A CPU Trainer that writes and prints nothing of its own: the callback under test is all."""
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


@pytest.mark.parametrize("load_s,step_s,slow", [(0.05, 0.0, "loader"), (0.0, 0.05, "step")])
def test_data_wait_is_the_share_of_step_time_spent_waiting_for_the_loader(load_s, step_s, slow):
    throughput = Throughput()
    trainer = quiet_trainer(
        max_epochs=2,
        callbacks=[throughput],
    )
    loader = torch.utils.data.DataLoader(_Sleepy(load_s), batch_size=2)
    trainer.fit(_Model(step_s), train_dataloaders=loader)
    wait = throughput.typical_wait
    assert (wait > 0.8) if slow == "loader" else (wait < 0.2), wait
    assert len(throughput.per_epoch) == 2 and throughput.typical > 0


def _epoch(trainer_epoch: int, **metrics) -> SimpleNamespace:
    """What BestEpoch reads of a trainer at an epoch's end."""
    values = {k.replace("__", "/"): torch.tensor(v) for k, v in metrics.items()}
    return SimpleNamespace(current_epoch=trainer_epoch, callback_metrics=values, sanity_checking=False)


def test_best_epoch_follows_the_monitor_and_its_mode():
    losses, accs = [0.9, 0.5, 0.7], [0.6, 0.6, 0.8]
    by_loss, by_acc = BestEpoch("val/loss", "min"), BestEpoch()
    for epoch, (loss, acc) in enumerate(zip(losses, accs, strict=True)):
        for callback in (by_loss, by_acc):
            callback.on_train_epoch_end(_epoch(epoch, val__loss=loss, val__acc=acc), None)
    assert by_loss.best == (1, 0.5), "the smallest loss"
    assert by_acc.best == (2, pytest.approx(0.8)), "the largest top-1"
    # a resume that changed train.monitor does not rank val/acc values as losses
    changed = BestEpoch("val/loss", "min")
    changed.load_state_dict(by_acc.state_dict())
    assert changed.best == (None, None)
    kept = BestEpoch("val/loss", "min")
    kept.load_state_dict(by_loss.state_dict())
    assert kept.best == (1, 0.5)


class _Scored(_Model):
    """Logs val/acc from a fixed list, one value per epoch."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__(0.0)
        self.scores = scores

    def validation_step(self, batch, batch_idx):
        return None

    def on_validation_epoch_end(self) -> None:
        self.log("val/acc", self.scores[self.current_epoch])


def test_early_stopping_stops_when_patience_runs_out_and_says_so(caplog):
    stop = EarlyStop("val/acc", "max", patience=2)
    trainer = quiet_trainer(
        max_epochs=6,
        num_sanity_val_steps=0,
        callbacks=[stop],
    )
    loader = torch.utils.data.DataLoader(_Sleepy(0.0), batch_size=4)
    with caplog.at_level(logging.INFO, logger="effnet"):
        trainer.fit(_Scored([0.5, 0.7, 0.6, 0.65, 0.9, 0.9]), loader, loader)
    line = "early stopping after epoch 4: val/acc has not improved on 0.7000 (epoch 2) for 2 epochs"
    assert stop.stopped == line and line in caplog.messages
    assert trainer.current_epoch == 4, "epochs 5 and 6 never ran"
    # the state a checkpoint carries comes back, but the resumed command's patience wins
    resumed = EarlyStop("val/acc", "max", patience=5)
    resumed.load_state_dict(stop.state_dict())
    assert (resumed.wait_count, float(resumed.best_score), resumed.patience) == (2, pytest.approx(0.7), 5)


def test_results_rows_name_each_column_and_show_top5_only_past_five_classes():
    history = [
        {"epoch": 2, "val/acc": 0.5, "val/acc5": 0.9, "lrs": {"lr_head": 1e-3, "lr_backbone": 4e-4}},
        {
            "epoch": 1,
            "val/acc": 0.25,
            "val/acc5": 0.8,
            "wall_time_s": 3.0,
            "lrs": {"lr_head": 2e-3, "lr_backbone": 8e-4},
        },
    ]
    rows, fields = results_rows(history, num_classes=6)
    assert fields == [
        "epoch",
        "train_loss",
        "val_loss",
        "val_top1",
        "val_top5",
        "val_f1",
        "lr_head",
        "lr_backbone",
        "train_images_per_sec",
        "data_wait_fraction",
        "wall_time_s",
    ]
    assert [(r["epoch"], r["val_top1"], r["val_top5"], r["lr_backbone"]) for r in rows] == [
        (1, 0.25, 0.8, 8e-4),
        (2, 0.5, 0.9, 4e-4),
    ]
    assert "val_top5" not in results_rows(history, num_classes=5)[1], "with 5 classes top-5 is always 1"


def test_group_lrs_names_the_backbone_and_head_groups_the_module_builds():
    from timm.scheduler import create_scheduler_v2

    module = ClassifierModule(**module_sections(optimisation={"backbone_lr_scale": 0.4}))
    optimizer = torch.optim.AdamW(module.param_groups(module.net), lr=1e-3)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=2, warmup_epochs=0)
    scheduler.step(0)  # timm applies each group's lr_scale
    lrs = group_lrs(optimizer.param_groups)
    assert lrs == {"lr_head": pytest.approx(1e-3), "lr_backbone": pytest.approx(4e-4)}
    assert group_lrs(torch.optim.AdamW(module.net.parameters(), lr=1e-3).param_groups) == {"lr": 1e-3}


class _Images(torch.utils.data.Dataset):
    """uint8 CHW images as effnet's loaders give them, labels 0, 1, 0, 1, ..."""

    def __init__(self, n: int = 8) -> None:
        self.images = torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(0)).to(
            torch.uint8
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i % 2


@pytest.mark.parametrize("erase_prob", [0.0, 1.0])
def test_batch_preview_draws_the_first_batch_as_the_network_sees_it(erase_prob, tmp_path, one_thread):
    module = ClassifierModule(**module_sections(regularisation={"erase_prob": erase_prob}))
    preview = BatchPreview(tmp_path, ["ant", "bee"], tiles=3)
    data = _Images()
    trainer = quiet_trainer(
        max_steps=1,
        callbacks=[preview],
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=4))
    assert preview.shown == ["ant", "bee", "ant"]  # min(batch 4, 3 tiles), each with its class
    with Image.open(tmp_path / BATCH_FILE) as png:
        assert png.size == (3 * 200, 230)  # plots.batch_png: 2.0 x 2.3 inches a tile, one row
    first = data.images[:3]
    if erase_prob:  # erased on the device, after the loader: the picture shows it
        assert not torch.equal(preview.drawn, first)
    else:  # normalised for the network and back: the loader's pixels exactly
        assert torch.equal(preview.drawn, first)
