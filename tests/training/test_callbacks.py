import time
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from PIL import Image

from effnet.training.callbacks import BATCH_FILE, BatchPreview, FreezeBackbone, Throughput
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


@pytest.mark.parametrize("load_s,step_s,slow", [(0.05, 0.0, "loader"), (0.0, 0.05, "step")])
def test_data_wait_is_the_share_of_step_time_spent_waiting_for_the_loader(load_s, step_s, slow):
    throughput = Throughput()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[throughput],
    )
    loader = torch.utils.data.DataLoader(_Sleepy(load_s), batch_size=2)
    trainer.fit(_Model(step_s), train_dataloaders=loader)
    wait = throughput.typical_wait
    assert (wait > 0.8) if slow == "loader" else (wait < 0.2), wait
    assert len(throughput.per_epoch) == 2 and throughput.typical > 0


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


@pytest.fixture
def one_thread():
    """One intra-op thread, as effnet's runs on a shared 2-core machine have (data.threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("erase_prob", [0.0, 1.0])
def test_batch_preview_draws_the_first_batch_as_the_network_sees_it(erase_prob, tmp_path, one_thread):
    module = ClassifierModule(**module_sections(regularisation={"erase_prob": erase_prob}))
    preview = BatchPreview(tmp_path, ["ant", "bee"], tiles=3)
    data = _Images()
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
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
