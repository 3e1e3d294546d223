"""dry_run=true show_batch=true (effnet.training.preview): the plan's first augmented training batch,
drawn without training and before any run folder exists."""

import pytest
from PIL import Image

from effnet.start import dry_run_split
from effnet.training.preview import show_batch
from tests.helpers import FAST, compose_cfg, make_images


@pytest.mark.parametrize("tiles, size", [(16, (4 * 200, 230)), (3, (3 * 200, 230))])
def test_show_batch_draws_the_first_batch_without_training(tiles, size, tmp_path, monkeypatch, capsys):
    data = make_images(tmp_path / "data", {"ant": 6, "bee": 6})
    overrides = ["model=mobilenetv3_small", "aug=heavy", "data.threads=1", f"dashboards.train_batch={tiles}"]
    monkeypatch.chdir(tmp_path)
    plan, split = dry_run_split(compose_cfg([f"data.root={data}", *FAST, *overrides, "dry_run=true"]))
    path = show_batch(plan, split, root=tmp_path / "batches")
    with Image.open(path) as png:  # min(batch_size=4, dashboards.train_batch) tiles in one row
        assert png.size == size
    assert path.parent.parent == tmp_path / "batches" and path.name == "train_batches.png"
    out = capsys.readouterr().out
    assert (
        f"the first training batch as the network sees it ({size[0] // 200} of 4 images, augmented): {path}"
        in out
    )
    assert {p.name for p in tmp_path.iterdir()} == {"data", "batches", "outputs"}  # outputs/cache: the scan's
    assert not (tmp_path / "outputs" / "train").exists()
    assert not list(tmp_path.rglob("*.ckpt"))
