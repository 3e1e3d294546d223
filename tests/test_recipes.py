import functools
import re

import pytest

from effnet import memory, recipes
from effnet.plan import choose_recipe
from tests.helpers import compose_cfg

SEED_TABLE = {  # src/effnet/conf/data_size: the B0 fine-tuning recommendations
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


# mobile and edge deploy the int8 export, where Lite0 ran 2.7x faster than B0 (BENCHMARKS.md); the
# seed guidance's recipe numbers stay, only its model changes.
PRESETS = {
    "small": ("efficientnet_b0", dict(lr=5e-4, epochs=30, batch_size=16, dropout=0.3, aug="heavy")),
    "medium": ("efficientnet_b0", dict(lr=1e-3, epochs=20, batch_size=32, dropout=0.2, aug="standard")),
    "large": ("efficientnet_b0", dict(lr=1e-3, epochs=12, batch_size=64, dropout=0.15, aug="light")),
    "xlarge": ("efficientnet_b0", dict(lr=2e-3, epochs=8, batch_size=64, dropout=0.1, aug="light")),
    "mobile": ("tf_efficientnet_lite0", dict(lr=1e-3, epochs=20, batch_size=32, dropout=0.2)),
    "cloud": ("efficientnet_b0", dict(lr=1e-3, epochs=12, batch_size=64, dropout=0.2)),
    "edge": ("tf_efficientnet_lite0", dict(lr=5e-4, epochs=25, batch_size=16, dropout=0.25)),
}


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_resolve_to_their_model_and_recipe(preset):
    backbone, expected = PRESETS[preset]
    cfg = compose_cfg(
        [f"preset={preset}", "model=b3"]
    )  # the preset picks a model ... unless the user says otherwise
    assert cfg.model.backbone == "efficientnet_b3"
    cfg = compose_cfg([f"preset={preset}"])
    assert cfg.model.backbone == backbone
    recipe, _ = choose_recipe(cfg, num_train=3000)
    assert {k: getattr(recipe, k) for k in expected} == expected


def test_device_presets_pick_the_model_whose_whole_graph_quantises():
    """B0's squeeze-excitation (global pooling, small matmuls) and SiLU stay float between int8's
    quantise/dequantise pairs, which is why its int8 ran 2.7x slower than Lite0's."""
    import timm

    (backbone,) = {compose_cfg([f"preset={p}"]).model.backbone for p in ("mobile", "edge")}
    kinds = {type(m).__name__ for m in timm.create_model(backbone, pretrained=False).modules()}
    assert "SqueezeExcite" not in kinds and "SiLU" not in kinds and "ReLU6" in kinds
    b0 = {type(m).__name__ for m in timm.create_model("efficientnet_b0", pretrained=False).modules()}
    assert "SqueezeExcite" in b0 and "SiLU" in b0  # what the device presets moved away from


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


MB = 10**6
# A made-up model with round numbers: the arithmetic, not the measurement, is under test here.
COST = recipes.MemoryCost(
    native_size=224,
    weights=20 * MB,
    gradients=20 * MB,
    optimizer=40 * MB,
    constant=20 * MB,
    per_image=50 * MB,
)
CHECKPOINTED = recipes.MemoryCost(**{**COST.__dict__, "per_image": 10 * MB})
COSTS = {False: COST, True: CHECKPOINTED}
EIGHT_GB = recipes.MemoryBudget(tier_bytes=8 * 10**9, usable_fraction=0.9, cuda_overhead=500 * MB)


def test_capacity_is_the_usable_memory_over_the_activations_per_image():
    # (8000 x 0.9 - 500 - (20 + 20 + 40 + 20)) MB / 50 MB = 6600 / 50
    assert EIGHT_GB.usable == 6700 * MB
    assert recipes.micro_batch_capacity(COST, EIGHT_GB, 224) == 132
    assert recipes.micro_batch_capacity(COST, EIGHT_GB, 448) == 33, "twice the side: a quarter of the images"
    assert recipes.micro_batch_capacity(COST, EIGHT_GB, 224, ema=True) == 131, "an EMA holds one more copy"
    tiny = recipes.MemoryBudget(tier_bytes=600 * MB, usable_fraction=0.9, cuda_overhead=500 * MB)
    assert recipes.micro_batch_capacity(COST, tiny, 224) == 0, "not one image fits"


def test_the_predicted_peak_is_the_sum_of_its_terms():
    terms = recipes.peak_terms(COST, 16, 224, 500 * MB)
    assert terms == {
        "activations": 800 * MB,
        "CUDA context": 500 * MB,
        "weights": 20 * MB,
        "gradients": 20 * MB,
        "AdamW state": 40 * MB,
        "constant": 20 * MB,
    }
    plan = recipes.plan_batches(16, 1, costs=COSTS, budget=EIGHT_GB, image_size=224)
    assert plan.peak_bytes == sum(terms.values()) and dict(plan.peak) == terms
    assert (plan.tier_bytes, plan.usable_bytes) == (8 * 10**9, 7200 * MB)


def test_checkpointing_switches_on_below_the_minimum_with_its_measured_capacity():
    # 1 GB usable (1300 x 0.9 - 500 - 100 = 570 MB): 11 images plain, 57 checkpointed
    small = recipes.MemoryBudget(tier_bytes=1300 * MB, usable_fraction=0.9, cuda_overhead=500 * MB)
    plan = recipes.plan_batches(32, 1, costs=COSTS, budget=small, image_size=224, min_micro_batch=16)
    assert (plan.capacity, plan.micro_batch, plan.accumulate, plan.grad_checkpointing) == (57, 32, 1, True)
    plan = recipes.plan_batches(32, 1, costs=COSTS, budget=small, image_size=224, min_micro_batch=8)
    assert (plan.capacity, plan.micro_batch, plan.accumulate, plan.grad_checkpointing) == (11, 8, 4, False)
    off = recipes.plan_batches(
        32, 1, costs=COSTS, budget=small, image_size=224, min_micro_batch=16, grad_checkpointing=False
    )
    assert (off.micro_batch, off.grad_checkpointing) == (8, False), "the user said no"
    assert dict(plan.peak)["activations"] == 8 * 50 * MB


def test_a_model_that_does_not_fit_still_gets_a_plan_of_one_image():
    tiny = recipes.MemoryBudget(tier_bytes=600 * MB, usable_fraction=0.9, cuda_overhead=500 * MB)
    plan = recipes.plan_batches(8, 1, costs=COSTS, budget=tiny, image_size=224)
    assert (plan.capacity, plan.micro_batch, plan.accumulate, plan.grad_checkpointing) == (0, 1, 8, True)


@functools.cache
def tier_and_model(tier: str, model: str) -> tuple:
    cfg = compose_cfg([f"gpu={tier}", f"model={model}"])
    budget = recipes.memory_budget(cfg.gpu.memory_gb, cfg.gpu.usable_fraction, cfg.gpu.cuda_overhead_gb)
    return memory.costs(cfg.model.backbone, "bf16-mixed"), budget, cfg.model.image_size


@pytest.mark.parametrize("batch_size", [8, 16, 32, 48, 64, 96, 128])
@pytest.mark.parametrize("devices", [1, 2, 4, 8])
@pytest.mark.parametrize("tier", ["4gb", "8gb", "16gb", "80gb"])
@pytest.mark.parametrize("model", ["b0", "b3", "b7", "vit_base"])
def test_plan_reaches_the_batch_exactly(batch_size, devices, tier, model):
    if batch_size % devices:
        pytest.skip("not divisible")
    costs, budget, image_size = tier_and_model(tier, model)
    plan = recipes.plan_batches(batch_size, devices, costs=costs, budget=budget, image_size=image_size)
    assert plan.micro_batch * plan.accumulate * plan.devices == batch_size
    assert plan.micro_batch <= max(1, plan.capacity)
    assert plan.peak_bytes <= budget.tier_bytes or plan.capacity == 0


def test_bigger_models_get_smaller_micro_batches_and_checkpointing_when_tight():
    capacity = {
        m: recipes.micro_batch_capacity(tier_and_model("8gb", m)[0][False], tier_and_model("8gb", m)[1], size)
        for m, size in (("b0", 224), ("b4", 380), ("b7", 600))
    }
    assert capacity["b0"] > capacity["b4"] > capacity["b7"]
    costs, budget, _ = tier_and_model("4gb", "b7")
    plan = recipes.plan_batches(16, 1, costs=costs, budget=budget, image_size=600)
    assert plan.grad_checkpointing and plan.micro_batch * plan.accumulate == 16
    off = recipes.plan_batches(16, 1, costs=costs, budget=budget, image_size=600, grad_checkpointing=False)
    assert not off.grad_checkpointing and off.micro_batch <= max(1, off.capacity) < plan.micro_batch


def test_cpu_tier_has_no_ceiling_but_says_what_the_step_holds():
    plan = recipes.plan_batches(64, 2, costs=COSTS, budget=None, image_size=448)
    assert (plan.micro_batch, plan.accumulate, plan.capacity) == (32, 1, None)
    assert dict(plan.peak)["activations"] == 32 * 4 * 50 * MB and "CUDA context" not in dict(plan.peak)
    assert recipes.plan_batches(64, 2, costs=None, budget=None, image_size=448).peak == ()


def test_indivisible_batch_names_the_alternatives():
    with pytest.raises(
        ValueError, match="batch_size=16 cannot be split evenly over 3 devices; use batch_size=15 or 18"
    ):
        recipes.plan_batches(16, 3, costs=COSTS, budget=EIGHT_GB, image_size=224)


def test_a_precision_reads_the_row_of_its_activation_dtype():
    assert [recipes.precision_kind(p) for p in ("bf16-mixed", "16-mixed", "bf16-true", 16)] == ["bf16"] * 4
    assert [recipes.precision_kind(p) for p in ("32-true", 32, "64-true")] == ["fp32"] * 3


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
    "cores, devices, workers, gpu_threads, cpu_threads",
    [
        (2, 1, 1, 1, 2),
        (16, 1, 8, 8, 16),
        (16, 2, 7, 1, 8),
        (64, 4, 8, 8, 16),
        (1, 1, 1, 1, 1),
        (8, 8, 1, 1, 1),
    ],
)
def test_workers_get_their_cores_first_only_when_a_gpu_does_the_compute(
    cores, devices, workers, gpu_threads, cpu_threads
):
    assert recipes.loader_workers(cores, devices) == workers
    assert recipes.intra_op_threads(cores, devices, workers, cuda=True) == gpu_threads
    assert recipes.intra_op_threads(cores, devices, workers, cuda=False) == cpu_threads
    assert recipes.loader_nice(cuda=True) == 0 < recipes.loader_nice(cuda=False) <= 19
    assert recipes.intra_op_threads(cores, devices, workers, cuda=False, cap=1) == 1
    assert recipes.intra_op_threads(cores, devices, workers, cuda=False, cap=10**3) == cpu_threads


def test_compile_pays_only_for_a_long_cuda_run():
    assert recipes.compile_network("auto", cuda=False, steps=10**6, min_steps=2000)[0] is False
    assert recipes.compile_network("auto", cuda=True, steps=1999, min_steps=2000) == (
        False,
        "auto: 1999 optimizer steps, fewer than model.compile_min_steps=2000",
    )
    assert recipes.compile_network("auto", cuda=True, steps=2000, min_steps=2000)[0] is True
    assert recipes.compile_network(True, cuda=False, steps=1, min_steps=2000) == (True, "model.compile=true")
    assert recipes.compile_network(False, cuda=True, steps=10**6, min_steps=1) == (
        False,
        "model.compile=false",
    )


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
    gb = 10**9
    batches = recipes.plan_batches(32, 1, costs=COSTS, budget=None, image_size=224)
    same, need, notes = recipes.fit_cpu_memory(batches, COST, 224, 1, 64 * gb)
    assert same == batches and notes == [] and need == recipes.cpu_step_bytes(COST, 224, 32)
    # 1.1 GB of runtime, 100 MB of weights, gradients, AdamW and constant, 32 x 50 MB x 1.4 of activations
    assert need == 1_100 * MB + 100 * MB + round(1.4 * 32 * 50 * MB)

    lowered, need, (note,) = recipes.fit_cpu_memory(batches, COST, 1024, 1, 20 * gb)
    assert (lowered.micro_batch, lowered.accumulate) == (8, 4) and need <= 0.85 * 20 * gb
    assert recipes.cpu_step_bytes(COST, 1024, 16) > 0.85 * 20 * gb  # the next divisor up does not fit
    assert dict(lowered.peak)["activations"] == round(COST.activations(8, 1024))  # the terms follow
    assert note.startswith(
        "micro-batch lowered from 32 to 8 (accumulating 4) so that a training step fits in RAM"
    )

    with pytest.raises(ValueError) as raised:
        recipes.fit_cpu_memory(batches, COST, 8192, 1, 20 * gb)
    fits = int(re.search(r"image_size=(\d+) or smaller fits", str(raised.value)).group(1))
    assert str(raised.value).startswith(
        f"image_size=8192: a training step on the CPU needs ~{recipes.cpu_step_bytes(COST, 8192, 1) / gb:.1f} GB "
        "of RAM even at micro-batch 1, more than the 17.0 GB a run may take (85% of the 20.0 GB available)"
    )
    assert fits % 32 == 0
    assert recipes.cpu_step_bytes(COST, fits, 1) <= 17 * gb < recipes.cpu_step_bytes(COST, fits + 32, 1)
    two = recipes.fit_cpu_memory(batches, COST, 224, 2, 64 * gb)[1]  # two processes, twice the RAM
    assert two == 2 * recipes.cpu_step_bytes(COST, 224, 32)


MEASURE = r"""
import resource, sys, timm, torch

def status(key):  # kB lines of /proc/self/status
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

torch.set_num_threads(1)
model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=3)
opt = torch.optim.AdamW(model.parameters())
size = int(sys.argv[1])
x, y = torch.randn(2, 3, size, size), torch.tensor([0, 1])
open("/proc/self/clear_refs", "w").write("5")  # the peak restarts here: imports' transients drop out
before = status("VmRSS:")
torch.nn.functional.cross_entropy(model(x), y).backward()
opt.step()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(peak, status("VmHWM:") - before, sum(p.numel() for p in model.parameters()))
"""


def test_the_cpu_estimate_holds_for_a_real_step():
    """One real B0 training step at each of two sizes, each in a fresh process (a peak is a
    process's maximum): the peak RAM is within the prediction, and the prediction's growth with the
    pixels is the measured growth of the step's own peak, within 30%."""
    import subprocess
    import sys

    procs = [
        subprocess.Popen([sys.executable, "-c", MEASURE, str(size)], stdout=subprocess.PIPE, text=True)
        for size in (192, 320)
    ]
    (_, small, params), (large, large_step, _) = [
        tuple(map(int, p.communicate(timeout=300)[0].split())) for p in procs
    ]
    cost = memory.costs("efficientnet_b0", "32-true")[False]  # memory.csv's measured B0
    assert cost.weights // 4 == pytest.approx(params, rel=0.01)  # the same network (its head aside)
    predicted = {s: recipes.cpu_step_bytes(cost, s, 2) for s in (192, 320)}
    assert 0.6 * predicted[320] < large <= predicted[320], (large, predicted)
    # The growth compares what each step itself added above the resident set before it: a process's
    # lifetime peak also holds the imports' transients and the shared-library pages the kernel kept,
    # which vary with the machine's load and once made a CI run see less than half the growth.
    growth, predicted_growth = large_step - small, predicted[320] - predicted[192]
    assert 0.7 < growth / predicted_growth < 1.3, (growth, predicted_growth)


@pytest.mark.parametrize(
    "images, micro, accumulate, world, limit, expected",
    [
        (244, 8, 4, 1, None, 8),  # 30 whole micro-batches (the loader drops the last 4 images), 8 steps
        (244, 8, 1, 2, None, 15),  # each of 2 processes: 122 images, 15 micro-batches
        (6, 8, 1, 1, None, 1),  # fewer images than a micro-batch: one short batch
        (244, 8, 1, 1, 5, 5),  # trainer.limit_train_batches=5
        (244, 8, 1, 1, 0.5, 15),  # trainer.limit_train_batches=0.5
    ],
)
def test_steps_per_epoch_count_as_lightning_does(images, micro, accumulate, world, limit, expected):
    assert recipes.steps_per_epoch(images, micro, accumulate, world, limit) == expected


def test_the_finder_takes_at_most_the_runs_own_steps_and_enough_for_a_suggestion():
    assert recipes.finder_steps(100, 30, 10) == 100
    assert recipes.finder_steps(100, 8, 2) == 16
    with pytest.raises(ValueError, match=r"takes 12 optimizer step\(s\) \(2 epoch\(s\) x 6\).*epochs=3"):
        recipes.finder_steps(100, 6, 2)
