"""effnet.memory: the measured memory model. B0 is measured again here on the CPU and checked
against memory.csv; fake tensors must count what real ones hold; docs/recipes.md's tier tables must
be the generator's. The `gpu` tests put the prediction against torch.cuda.max_memory_allocated."""

from pathlib import Path

import pytest
import torch

from effnet import memory

ROOT = Path(__file__).resolve().parents[1]


def test_real_tensors_on_the_cpu_reproduce_b0s_row(one_thread):
    row = memory.read()[("efficientnet_b0", "fp32", False)]
    real = memory.measure("efficientnet_b0", "fp32", False, fake=False, batches=(1, 2))
    assert real.image_size == row.image_size == 224
    assert real.saved_bytes_per_image == pytest.approx(row.saved_bytes_per_image, rel=0.05)
    assert (real.params, real.weight_bytes, real.adamw_bytes) == (
        row.params,
        row.weight_bytes,
        row.adamw_bytes,
    )


def test_fake_tensors_count_what_real_tensors_hold(one_thread):
    # bf16 autocast and gradient checkpointing together, at 64 px to keep the real run small
    kwargs = dict(image_size=64, batches=(1, 2), optimizer=False)
    real = memory.measure("efficientnet_b0", "bf16", True, fake=False, **kwargs)
    fake = memory.measure("efficientnet_b0", "bf16", True, fake=True, **kwargs)
    assert fake.saved_bytes_per_image == real.saved_bytes_per_image > 0
    assert fake.recompute_bytes_per_image == real.recompute_bytes_per_image > 0
    assert fake.constant_bytes == pytest.approx(real.constant_bytes, rel=0.02)


def test_every_model_has_its_four_rows_and_they_order_as_they_must():
    rows = memory.read()
    for name, config in memory.model_configs().items():
        four = {(p, ck): rows[(config["backbone"], p, ck)] for p in memory.PRECISIONS for ck in (False, True)}
        assert {r.model for r in four.values()} == {name}
        plain, half = four[("fp32", False)], four[("bf16", False)]
        assert 0.45 < half.per_image / plain.per_image < 0.6, f"{name}: bf16 saves about half the bytes"
        for precision in memory.PRECISIONS:
            assert four[(precision, True)].per_image < four[(precision, False)].per_image, name
        assert plain.grad_bytes == plain.weight_bytes
        assert 2 * plain.weight_bytes <= plain.adamw_bytes < 2.01 * plain.weight_bytes, (
            "two moments, a step count"
        )


def test_the_csv_says_how_when_where_and_with_what_it_was_measured():
    lines = memory.header()
    text = "\n".join(lines)
    assert any(line.startswith("command: python -m effnet.memory") for line in lines)
    assert "machine: " in text and "date: " in text
    assert f"torch {torch.__version__.split('+')[0]}" in text and "timm " in text


def test_the_docs_tier_tables_are_the_generators():
    assert memory.TABLES_PAGE == ROOT / "docs" / "recipes.md"
    assert memory.page_tables() == memory.tables(), (
        "docs/recipes.md's GPU memory tables differ from memory.csv: run `python -m effnet.memory --write-tables`"
    )


def test_the_generator_writes_the_tables_between_the_markers_only(tmp_path):
    page = tmp_path / "recipes.md"
    page.write_text(f"# Before\n\n{memory.TABLE_START}\nold table\n{memory.TABLE_END}\n\nAfter.\n")
    assert memory.write_tables(page)
    assert memory.page_tables(page) == memory.tables()
    text = page.read_text()
    assert text.startswith(f"# Before\n\n{memory.TABLE_START}\n") and text.endswith(
        f"{memory.TABLE_END}\n\nAfter.\n"
    )
    assert not memory.write_tables(page), "a second write changes nothing"


def test_the_gpu_check_predicts_without_a_gpu():
    (b0,) = memory.gpu_check(["b0"], tiers=["8gb"])
    cost = memory.costs("efficientnet_b0", "bf16-mixed")[False]
    assert b0["micro_batch"] == b0["capacity"] and not b0["checkpointing"]
    assert b0["predicted_allocated"] == cost.fixed() + round(cost.activations(b0["micro_batch"], 224))
    assert "max_allocated" not in b0, "nothing measured without run="


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["b0", "lite0", "b4"])
def test_the_tier_micro_batch_fits_and_the_prediction_holds_on_cuda(model):
    (result,) = memory.gpu_check([model], tiers=["8gb"], run=memory.gpu_peak)
    assert result["fits"], result["error"]
    assert 0.8 <= result["ratio"] <= 1.2, result
