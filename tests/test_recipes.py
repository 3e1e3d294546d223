import functools
import re

import pytest

from effnet import recipes
from effnet.plan import choose_recipe
from tests.helpers import compose_cfg

SEED_TABLE = {  # conf/data_size: the B0 fine-tuning recommendations
    "small": dict(lr=5e-4, epochs=30, batch_size=16, dropout=0.3, aug="heavy", max_images=1000),
    "medium": dict(lr=1e-3, epochs=20, batch_size=32, dropout=0.2, aug="standard", max_images=5000),
    "large": dict(lr=1e-3, epochs=12, batch_size=64, dropout=0.15, aug="light", max_images=20000),
    "xlarge": dict(lr=2e-3, epochs=8, batch_size=64, dropout=0.1, aug="light", max_images=None),
}


@pytest.mark.parametrize("name", SEED_TABLE)
def test_data_size_rows_hold_the_recommended_numbers(name):
    row = compose_cfg([f"data_size={name}"]).data_size
    assert {k: row[k] for k in SEED_TABLE[name]} == SEED_TABLE[name]


@pytest.mark.parametrize(
    "images, expected",
    [
        (10, "small"),
        (999, "small"),
        (1000, "medium"),
        (4999, "medium"),
        (5000, "large"),
        (19999, "large"),
        (20000, "xlarge"),
        (10**6, "xlarge"),
    ],
)
def test_auto_picks_the_row_by_image_count(images, expected):
    rows = compose_cfg([]).data_size.rows
    assert recipes.pick_data_size(rows, images) == expected


@pytest.mark.parametrize(
    "preset, expected",
    [
        ("small", dict(lr=5e-4, epochs=30, batch_size=16, dropout=0.3, aug="heavy")),
        ("medium", dict(lr=1e-3, epochs=20, batch_size=32, dropout=0.2, aug="standard")),
        ("large", dict(lr=1e-3, epochs=12, batch_size=64, dropout=0.15, aug="light")),
        ("xlarge", dict(lr=2e-3, epochs=8, batch_size=64, dropout=0.1, aug="light")),
        ("mobile", dict(lr=1e-3, epochs=20, batch_size=32, dropout=0.2)),
        ("cloud", dict(lr=1e-3, epochs=12, batch_size=64, dropout=0.2)),
        ("edge", dict(lr=5e-4, epochs=25, batch_size=16, dropout=0.25)),
    ],
)
def test_presets_resolve_to_their_recipe_on_b0(preset, expected):
    cfg = compose_cfg(
        [f"preset={preset}", "model=b3"]
    )  # the preset pins B0 ... unless the user says otherwise
    assert cfg.model.backbone == "efficientnet_b3"
    cfg = compose_cfg([f"preset={preset}"])
    assert cfg.model.backbone == "efficientnet_b0"
    recipe, _ = choose_recipe(cfg, num_train=3000)
    assert {k: getattr(recipe, k) for k in expected} == expected


def test_user_values_win_over_preset_and_recipe():
    cfg = compose_cfg(["preset=small", "lr=0.01", "epochs=3", "batch_size=8", "dropout=0.05", "aug=light"])
    overrides = {k: cfg[k] for k in ("lr", "epochs", "batch_size", "dropout", "aug")}
    recipe = recipes.resolve_recipe(overrides, "small", cfg.data_size, cfg.model.dropout)
    assert (recipe.lr, recipe.epochs, recipe.batch_size, recipe.dropout, recipe.aug) == (
        0.01,
        3,
        8,
        0.05,
        "light",
    )
    cfg = compose_cfg(["preset=edge", "lr=2e-3"])
    assert cfg.lr == 2e-3 and cfg.batch_size == 16


def test_user_data_size_wins_over_preset():
    assert compose_cfg(["preset=small", "data_size=large"]).data_size.name == "large"


def test_head_dropout_keeps_b0_exact_and_shifts_other_variants():
    assert recipes.head_dropout(0.3, 0.2) == 0.3  # B0 small
    assert recipes.head_dropout(0.15, 0.2) == 0.15  # B0 large
    assert recipes.head_dropout(0.3, 0.3) == 0.4  # B3 small: paper 0.3 + 0.1
    assert recipes.head_dropout(0.3, 0.5) == 0.5  # capped
    assert recipes.head_dropout(0.1, 0.0) == 0.0  # floored


@functools.cache
def tier_and_model(tier: str, model: str) -> tuple:
    cfg = compose_cfg([f"gpu={tier}", f"model={model}"])
    return cfg.gpu.b0_batch, cfg.model.memory_factor, cfg.model.image_size


@pytest.mark.parametrize("batch_size", [8, 16, 32, 48, 64, 96, 128])
@pytest.mark.parametrize("devices", [1, 2, 4, 8])
@pytest.mark.parametrize("tier", ["4gb", "8gb", "16gb", "80gb"])
@pytest.mark.parametrize("model", ["b0", "b3", "b7", "vit_base"])
def test_plan_reaches_the_batch_exactly(batch_size, devices, tier, model):
    if batch_size % devices:
        pytest.skip("not divisible")
    b0_batch, memory_factor, image_size = tier_and_model(tier, model)
    plan = recipes.plan_batches(
        batch_size, devices, b0_batch=b0_batch, memory_factor=memory_factor, image_size=image_size
    )
    assert plan.micro_batch * plan.accumulate * plan.devices == batch_size
    assert plan.micro_batch <= plan.capacity


def test_tiers_follow_the_guidance_for_b0():
    # 16-32 per step on 8 GB, 32-64 on 16 GB+, at B0/224
    for tier, batch, micro in [("8gb", 32, 32), ("16gb", 64, 64), ("4gb", 32, 16)]:
        cfg = compose_cfg([f"gpu={tier}"])
        plan = recipes.plan_batches(batch, 1, b0_batch=cfg.gpu.b0_batch, memory_factor=1.0, image_size=224)
        assert (plan.micro_batch, plan.accumulate, plan.grad_checkpointing) == (micro, batch // micro, False)


def test_bigger_models_get_smaller_micro_batches_and_checkpointing_when_tight():
    b0 = recipes.micro_batch_capacity(32, 1.0, 224)
    b4 = recipes.micro_batch_capacity(32, 2.5, 380)
    b7 = recipes.micro_batch_capacity(32, 6.2, 600)
    assert b0 > b4 > b7 >= 1
    plan = recipes.plan_batches(16, 1, b0_batch=32, memory_factor=6.2, image_size=600)
    assert plan.grad_checkpointing and plan.micro_batch * plan.accumulate == 16
    off = recipes.plan_batches(
        16, 1, b0_batch=32, memory_factor=6.2, image_size=600, grad_checkpointing=False
    )
    assert not off.grad_checkpointing and off.micro_batch <= b7


def test_cpu_tier_has_no_ceiling():
    plan = recipes.plan_batches(64, 2, b0_batch=None, memory_factor=6.2, image_size=600)
    assert (plan.micro_batch, plan.accumulate) == (32, 1)


def test_indivisible_batch_names_the_alternatives():
    with pytest.raises(
        ValueError, match="batch_size=16 cannot be split evenly over 3 devices; use batch_size=15 or 18"
    ):
        recipes.plan_batches(16, 3, b0_batch=32, memory_factor=1.0, image_size=224)


def test_auto_tier_reads_device_memory():
    tiers = compose_cfg([]).gpu.tiers
    gib = 1024**3
    assert recipes.pick_tier(tiers, None) == "cpu"
    assert recipes.pick_tier(tiers, 8 * gib) == "8gb"
    assert recipes.pick_tier(tiers, int(7.8 * gib)) == "8gb"  # what an 8 GB card reports
    assert recipes.pick_tier(tiers, 24 * gib) == "24gb"
    assert recipes.pick_tier(tiers, 141 * gib) == "80gb"  # H200
    assert recipes.pick_tier(tiers, 2 * gib) == "4gb"  # smaller than every tier: the smallest


def test_precision_follows_device_unless_set():
    assert recipes.pick_precision(None, on_cuda=True, bf16_supported=True) == "bf16-mixed"
    assert recipes.pick_precision(None, on_cuda=True, bf16_supported=False) == "16-mixed"
    assert recipes.pick_precision(None, on_cuda=False, bf16_supported=False) == "32-true"
    assert recipes.pick_precision("bf16-mixed", on_cuda=False, bf16_supported=False) == "bf16-mixed"


@pytest.mark.parametrize(
    "cores, devices, workers, threads",
    [(2, 1, 1, 1), (16, 1, 8, 8), (16, 2, 7, 1), (64, 4, 8, 8), (1, 1, 1, 1), (8, 8, 1, 1)],
)
def test_workers_get_their_cores_and_threads_the_rest(cores, devices, workers, threads):
    assert recipes.loader_workers(cores, devices) == workers
    assert recipes.intra_op_threads(cores, devices, workers) == threads


def test_auto_cache_takes_ram_only_when_the_store_fits_comfortably():
    store = 3 * 10**9
    mode, why = recipes.choose_cache("auto", store, available_bytes=20 * 10**9, processes=1)
    assert mode == "ram" and why == "auto: the store (~3.0 GB) fits in RAM (20.0 GB available)"
    mode, why = recipes.choose_cache("auto", store, available_bytes=5 * 10**9, processes=1)
    assert mode == "none" and "data.cache=disk" in why, "more than half of what is free: not in RAM"
    assert recipes.choose_cache("auto", store, 20 * 10**9, processes=4)[0] == "none", "one store per process"
    assert recipes.choose_cache("auto", store, None, 1)[0] == "none"
    assert recipes.choose_cache("disk", store, 1, 1) == ("disk", "data.cache=disk, ~3.0 GB")


def test_the_store_estimate_follows_the_decode_rules():
    assert recipes.decode_size(224, 0.08) == 792 and recipes.decode_size(224, 0.35) == 379
    # a 4000x3000 JPEG decodes at 1/2 scale (1500 >= 792), a PNG is reduced by 3 (1000)
    assert recipes.stored_side(3000, 792, jpeg=True) == 1500
    assert recipes.stored_side(3000, 792, jpeg=False) == 1000
    assert recipes.stored_side(500, 792) == 500, "never enlarged"
    assert recipes.cache_bytes([(4000, 3000, True), (500, 375, True)], 10, 792) == 5 * 3 * (
        2000 * 1500 + 500 * 375
    )


def test_a_pretrained_backbone_trains_at_a_share_of_the_lr():
    assert recipes.backbone_lr_scale(0.4, pretrained=True) == 0.4
    assert recipes.backbone_lr_scale(0.4, pretrained=False) == 1.0


# RAM of a training step on the CPU


def test_cpu_memory_lowers_the_micro_batch_or_names_the_size_that_fits():
    gb, params = 10**9, 4_000_000  # about B0's
    batches = recipes.plan_batches(32, 1, b0_batch=None, memory_factor=1.0, image_size=224)
    same, need, notes = recipes.fit_cpu_memory(batches, params, 224, 1.0, 1, 64 * gb)
    assert same == batches and notes == [] and need == recipes.cpu_step_bytes(params, 224, 32, 1.0)
    assert 4 * gb < need < 6 * gb  # 1.1 GB of runtime, 64 MB of fp32 state, ~3.9 GB of activations

    lowered, need, (note,) = recipes.fit_cpu_memory(batches, params, 1024, 1.0, 1, 20 * gb)
    assert (lowered.micro_batch, lowered.accumulate) == (4, 8) and need <= 0.85 * 20 * gb
    assert recipes.cpu_step_bytes(params, 1024, 8, 1.0) > 0.85 * 20 * gb  # the next divisor up does not fit
    assert note.startswith(
        "micro-batch lowered from 32 to 4 (accumulating 8) so that a training step fits in RAM"
    )

    with pytest.raises(ValueError) as raised:
        recipes.fit_cpu_memory(batches, params, 8192, 1.0, 1, 20 * gb)
    fits = int(re.search(r"image_size=(\d+) or smaller fits", str(raised.value)).group(1))
    assert str(raised.value).startswith(
        f"image_size=8192: a training step on the CPU needs ~{recipes.cpu_step_bytes(params, 8192, 1, 1.0) / gb:.1f} GB "
        "of RAM even at micro-batch 1, more than "
        "the 17.0 GB a run may take (85% of the 20.0 GB available)"
    )
    assert (
        recipes.cpu_step_bytes(params, fits, 1, 1.0)
        <= 17 * gb
        < recipes.cpu_step_bytes(params, fits + 32, 1, 1.0)
    )
    assert fits % 32 == 0
    two = recipes.fit_cpu_memory(batches, params, 224, 1.0, 2, 64 * gb)[1]  # two processes, twice the RAM
    assert two == 2 * recipes.cpu_step_bytes(params, 224, 32, 1.0)


MEASURE = r"""
import resource, sys, timm, torch
torch.set_num_threads(1)
model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=3)
opt = torch.optim.AdamW(model.parameters())
for size in map(int, sys.argv[1:]):
    x, y = torch.randn(2, 3, size, size), torch.tensor([0, 1])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, sum(p.numel() for p in model.parameters()))
"""


def test_the_cpu_estimate_holds_for_a_real_step():
    """One real B0 training step at two sizes in a fresh process: the peak RAM is within the
    prediction, and the prediction's growth with the pixels is the measured one, within 30%."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", MEASURE, "192", "320"], capture_output=True, text=True, timeout=300, check=True
    ).stdout.split()
    (small, params), (large, _) = [(int(out[i]), int(out[i + 1])) for i in (0, 2)]
    predicted = {s: recipes.cpu_step_bytes(params, s, 2, 1.0) for s in (192, 320)}
    assert 0.6 * predicted[320] < large <= predicted[320], (large, predicted)
    growth, predicted_growth = large - small, predicted[320] - predicted[192]
    assert 0.7 < growth / predicted_growth < 1.3, (growth, predicted_growth)
