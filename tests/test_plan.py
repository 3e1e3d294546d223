"""The run plan: every value a run uses, resolved once. `build` is pure: these tests give it a
config, the data facts and a device, and check what it decides (no torch, no folder scan)."""

import re
from dataclasses import replace

import pytest

from effnet import memory, plan, recipes
from effnet.errors import UserError
from effnet.preprocessing import Preprocessing
from tests.helpers import compose_cfg, make_images

IMAGENET = Preprocessing(224, 0.875, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CPU = plan.Device(cuda=False, per_node=1, cores=2)
H100 = plan.Device(cuda=True, per_node=1, memory_bytes=80 * 10**9, bf16=True, name="H100", cores=16)
HYMENOPTERA = plan.DataFacts(
    root="hymenoptera", classes=("ants", "bees"), train=244, val=153, class_counts={"ants": 123, "bees": 121}
)


def build(overrides, data=HYMENOPTERA, device=CPU, **kwargs) -> plan.RunPlan:
    return plan.build(compose_cfg(["data.root=/x", *overrides]), data, device, IMAGENET, **kwargs)


def test_small_preset_on_the_8gb_tier_is_the_documented_recipe():
    p = build(["preset=small", "gpu=8gb"], preset="small")
    assert (p.recipe.lr, p.recipe.epochs, p.recipe.batch_size, p.recipe.aug) == (5e-4, 30, 16, "heavy")
    assert (p.batches.micro_batch, p.batches.accumulate, p.world_size) == (16, 1, 1)
    assert p.precision == "32-true" and p.tier == "8gb"
    assert p.recipe_reason == "data_size=small (from preset=small), images not counted"
    assert any("gpu=8gb but no CUDA device" in w for w in p.warnings)
    assert (p.regularisation.mixup, p.regularisation.cutmix, p.regularisation.erase_prob) == (0.0, 0.0, 0.25)
    assert p.optimisation.lr == p.recipe.lr and p.network.dropout == p.recipe.dropout == 0.3


def test_auto_counts_the_images_and_says_why():
    p = build([], data=plan.DataFacts("x", ("a", "b"), train=3000, val=10))
    assert (
        p.recipe.data_size == "medium" and p.recipe_reason == "data_size=auto: 3,000 training images < 5,000"
    )
    assert p.recipe_sources["lr"] == "medium row"


def test_each_value_says_where_it_came_from():
    p = build(["preset=small", "lr=1e-2"], cli_overrides=["preset=small", "lr=1e-2"], preset="small")
    assert p.recipe.lr == 1e-2 and p.recipe_sources["lr"] == "command line"
    assert p.recipe_sources["epochs"] == "small row"
    p = build(["preset=edge"], preset="edge")
    assert p.recipe_sources["batch_size"] == "preset=edge" and p.recipe.batch_size == 16
    p = build(["model=b4"])
    assert p.recipe_sources["dropout"] == "small row, shifted for efficientnet_b4" and p.recipe.dropout == 0.5


def test_compile_follows_the_device_and_the_run_length():
    p = build(["preset=small"], device=H100)  # 30 epochs x 15 steps of 244 images
    assert not p.runtime.compile and p.compile_reason.startswith("auto: 450 optimizer steps")
    p = build(["preset=small", "model.compile_min_steps=400"], device=H100)
    assert p.runtime.compile and ("compile", f"on ({p.compile_reason})") in plan.plan_rows(p)
    assert p.summary()["compile"] is True and p.module_args()["runtime"]["compile"] is True
    assert not build(["model.compile_min_steps=1"]).runtime.compile, "never on the CPU by itself"
    assert build(["model.compile=true"]).runtime.compile, "the user wins"


def test_a_cuda_device_gets_bf16_channels_last_and_its_memory_tier():
    p = build([], device=H100)
    assert (p.precision, p.tier, p.accelerator) == ("bf16-mixed", "80gb", "cuda")
    assert p.runtime.channels_last and p.loading.pin_memory
    old = plan.Device(cuda=True, per_node=1, memory_bytes=16 * 10**9, bf16=False, cores=8)
    p = build(["gpu=auto"], device=old)
    assert (p.precision, p.tier) == ("16-mixed", "16gb")
    assert build(["trainer.precision=32-true"], device=H100).precision == "32-true", "the user wins"


def test_tight_memory_turns_on_checkpointing_and_accumulation():
    # B7 at 600 px in bf16: 1 image fits in 4 GB as it is, 8 with gradient checkpointing (memory.csv)
    p = build(["model=b7", "gpu=4gb", "batch_size=16"], device=H100)
    assert (p.batches.micro_batch, p.batches.accumulate, p.runtime.grad_checkpointing) == (8, 2, True)
    assert p.trainer_args()["accumulate_grad_batches"] == 2
    p = build(["model=b7", "gpu=4gb", "batch_size=16", "model.grad_checkpointing=false"], device=H100)
    assert (p.batches.micro_batch, p.batches.accumulate, p.runtime.grad_checkpointing) == (1, 16, False)


def test_the_tier_micro_batch_follows_the_precision_and_the_image_size():
    bf16 = build(["gpu=8gb", "batch_size=128"], device=H100).batches
    fp32 = build(["gpu=8gb", "batch_size=128", "trainer.precision=32-true"], device=H100).batches
    assert bf16.capacity > 1.9 * fp32.capacity, "bf16 activations take half the bytes"
    small = build(["gpu=8gb", "batch_size=128", "image_size=112"], device=H100).batches
    assert small.capacity > 3.5 * bf16.capacity, "a quarter of the pixels"


def test_dry_run_shows_the_predicted_peak_and_its_largest_term():
    p = build(["model=b4", "gpu=8gb", "batch_size=16"], device=H100)
    row = dict(plan.plan_rows(p))["memory"]
    peak = p.batches.peak_bytes / 1e9
    assert row.startswith(
        f"predicted peak {peak:.1f} GB of 8 GB (gpu=8gb; 7.2 GB usable) for micro-batch 16 (bf16)"
    )
    assert "; largest term: activations " in row and "; then CUDA context 0.50" in row
    assert 0 < peak <= 7.2
    row = dict(plan.plan_rows(build(["batch_size=16"])))["memory"]
    assert "of host memory (gpu=cpu: no ceiling) for micro-batch 16 (fp32)" in row


def test_a_backbone_without_measured_memory_is_measured_or_refused_on_a_gpu_tier(monkeypatch):
    with pytest.raises(UserError, match="convnext_tiny: its memory is not measured, so gpu=8gb cannot size"):
        build(["model.backbone=convnext_tiny", "gpu=8gb"], device=H100)
    assert build(["model.backbone=convnext_tiny"]).batches.peak == (), "the cpu tier needs no measurement"
    # stand-in rows, B0's: measuring convnext here would take seconds
    b0 = [replace(r, backbone="convnext_tiny") for r in memory.read().values() if r.model == "b0"]
    monkeypatch.setattr(memory, "measure_backbone", lambda backbone: b0)
    measured = plan.memory_rows("convnext_tiny")
    p = build(["model.backbone=convnext_tiny", "gpu=8gb"], device=H100, memory_rows=measured)
    assert p.batches.capacity == build(["gpu=8gb"], device=H100).batches.capacity
    assert plan.memory_rows("efficientnet_b0") == memory.read(), "a shipped model is read, not measured"
    assert plan.memory_rows("convnext_tiny", needed=False) == memory.read(), "the cpu tier measures nothing"

    def unmeasurable(backbone):
        raise NotImplementedError("no fake kernel for aten::something")

    monkeypatch.setattr(memory, "measure_backbone", unmeasurable)
    assert plan.memory_rows("convnext_tiny") == memory.read(), "left out: build() refuses it on a GPU tier"


def test_devices_split_the_batch_and_indivisible_is_one_line():
    four = plan.Device(cuda=True, per_node=4, memory_bytes=24 * 10**9, bf16=True, cores=32)
    p = build(["batch_size=64", "trainer.sync_batchnorm=true", "trainer=ddp"], device=four)
    assert (p.devices, p.batches.micro_batch, p.world_size) == (4, 16, 4)
    assert p.runtime.sync_batchnorm
    assert not build(["trainer.sync_batchnorm=true"]).runtime.sync_batchnorm, "one device: nothing to sync"
    with pytest.raises(
        UserError, match="batch_size=30 cannot be split evenly over 4 devices; use batch_size=28 or 32"
    ):
        build(["batch_size=30"], device=four)


def test_freezing_under_ddp_lets_ddp_skip_the_frozen_backbone():
    assert build(["trainer=ddp", "model.freeze_epochs=2"]).strategy == "ddp_find_unused_parameters_true"
    assert build(["trainer=ddp"]).strategy == "ddp"


def test_class_weights_are_inverse_frequency_and_refuse_mixed_labels():
    data = plan.DataFacts("x", ("a", "b"), train=40, val=4, class_counts={"a": 30, "b": 10})
    p = build(["data.balance=class_weights", "aug=light"], data=data)
    assert p.regularisation.class_weights == pytest.approx((40 / 60, 40 / 20))
    assert build(["aug=light"], data=data).regularisation.class_weights is None
    with pytest.raises(UserError, match="data.balance=class_weights does not combine with mixup"):
        build(["data.balance=class_weights", "aug=heavy", "augment.heavy.mixup=0.2"], data=data)


def test_threads_follow_the_device_that_computes():
    sixteen = plan.Device(cuda=False, per_node=1, cores=16)
    p = build([], device=sixteen)
    assert (p.loading.workers, p.loading.threads, p.loading.worker_nice) == (8, 16, 10)
    assert ("loader", "8 worker(s), 16 thread(s) per process, workers at nice +10") in plan.plan_rows(p)
    gpu = plan.Device(cuda=True, per_node=1, cores=16)
    p = build([], device=gpu)
    assert (p.loading.workers, p.loading.threads, p.loading.worker_nice) == (8, 8, 0), "workers feed a GPU"
    assert (build([]).loading.workers, build([]).loading.threads) == (1, 2)
    p = build(["data.num_workers=0"])
    assert (p.loading.workers, p.loading.threads, p.loading.worker_nice) == (0, 2, 0)
    capped = plan.Device(cuda=False, per_node=1, cores=16, thread_cap=4)
    p = build([], device=capped)
    assert ("loader", "8 worker(s), 4 thread(s) per process (OMP_NUM_THREADS), workers at nice +10") in (
        plan.plan_rows(p)
    )
    assert build(["data.threads=6"], device=capped).loading.threads == 6, "an explicit count wins"


def test_omp_num_threads_is_read_as_a_positive_count_or_not_at_all():
    assert plan.omp_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert [plan.omp_threads(env) for env in ({}, {"OMP_NUM_THREADS": "0"}, {"OMP_NUM_THREADS": "x"})] == [
        None
    ] * 3


def test_weights_come_from_the_checkpoint_on_resume():
    assert build([]).init == "pretrained"
    assert (
        build(["model.pretrained=false"]).init is None
        and build(["model.pretrained=false"]).weights == "random"
    )
    p = build([], resumed=plan.Resumed("outputs/train/x/checkpoints/last.ckpt", 3, 10, 0.4))
    assert p.init is None and "from the checkpoint" in p.weights and p.pretrained


def test_module_args_are_plain_values_a_checkpoint_can_hold():
    args = build(["model.head.hidden=[16]"]).module_args()
    assert args["network"]["classes"] == ["ants", "bees"] and args["network"]["hidden"] == [16]
    assert args["preprocessing"]["mean"] == [0.485, 0.456, 0.406]

    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, str | int | float | bool)

    assert plain(args)


def test_summary_and_rows_come_from_the_plan():
    p = build(["preset=small", "gpu=8gb"], preset="small", argv=["train.py", "data.root=/x", "dry_run=true"])
    summary = p.summary()
    assert (summary["lr"], summary["epochs"], summary["micro_batch_size"], summary["aug"]) == (
        5e-4,
        30,
        16,
        "heavy",
    )
    assert summary["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    table = dict(plan.plan_rows(p))
    assert table["batch plan"].startswith("micro-batch 16 x accumulate 1 x 1 device(s) = 16")
    assert table["start it"] == "python train.py data.root=/x", "the real run's command, without dry_run"
    assert "mean (0.485, 0.456, 0.406)" in table["preprocessing"]
    assert table["monitor"] == "val/acc (max) picks best.ckpt; no early stopping"


def test_the_plan_says_what_picks_the_best_epoch_and_when_the_run_stops_early():
    p = build(
        ["train.monitor=val/loss", "train.early_stopping.patience=3", "train.early_stopping.min_delta=0.01"]
    )
    assert (p.records.monitor, p.records.monitor_mode, p.records.early_stopping_patience) == (
        "val/loss",
        "min",
        3,
    )
    assert dict(plan.plan_rows(p))["monitor"] == (
        "val/loss (min) picks best.ckpt; early stopping after 3 epoch(s) without an improvement > 0.01"
    )


def test_resolve_reads_the_folder_and_the_backbones_own_preprocessing(flat_folder):
    lite, _, _ = plan.resolve(
        compose_cfg([f"data.root={flat_folder}", "model.backbone=tf_efficientnet_lite0"])
    )
    assert lite.preprocessing.mean == (0.5, 0.5, 0.5) and lite.preprocessing.std == (0.5, 0.5, 0.5)
    assert (lite.data.train, lite.data.val, lite.data.classes) == (18, 6, ("ant", "bee", "wasp"))
    b0, _, _ = plan.resolve(compose_cfg([f"data.root={flat_folder}"]))
    assert b0.preprocessing.mean == (0.485, 0.456, 0.406)
    mine, _, _ = plan.resolve(
        compose_cfg(
            [
                f"data.root={flat_folder}",
                "model.preprocessing.mean=[0.1,0.2,0.3]",
                "model.preprocessing.crop_pct=1.0",
            ]
        )
    )
    assert mine.preprocessing.mean == (0.1, 0.2, 0.3) and mine.preprocessing.resize == 224


def test_the_plan_chooses_the_data_cache_from_the_store_and_free_memory():
    photos = plan.DataFacts(**{**HYMENOPTERA.__dict__, "size_sample": ((500, 375, True),) * 4})
    roomy = plan.Device(cuda=False, per_node=1, cores=2, memory_available=16 * 10**9)
    p = build([], data=photos, device=roomy)
    assert p.loading.cache == "ram" and p.loading.cache_bytes == 244 * 500 * 375 * 3
    assert ("data cache", f"ram ({p.loading.cache_reason})") in plan.plan_rows(p)
    assert p.summary()["cache"] == "ram"
    tight = plan.Device(cuda=False, per_node=1, cores=2, memory_available=60 * 10**6)
    assert build([], data=photos, device=tight).loading.cache == "none"
    p = build(["data.cache=ram"], data=photos, device=tight)
    assert p.loading.cache == "ram" and any("data.cache=ram: the store" in w for w in p.warnings)
    assert build(["data.cache=disk"], data=photos, device=tight).loading.cache == "disk"


def test_data_threads_overrides_the_cores_left_after_the_workers():
    assert build(["data.num_workers=1"]).loading.threads == 2
    assert build(["data.num_workers=1", "data.threads=1"]).loading.threads == 1


def test_memory_for_a_ram_store_is_capped_by_shared_memory(monkeypatch):
    import os
    from types import SimpleNamespace

    roomy = plan.available_memory()
    assert roomy and roomy > 64 * 2**20
    # a container's default /dev/shm: 64 MB (this machine's cannot be made that small for a test)
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_bavail=16384, f_frsize=4096))
    assert plan.available_memory() == 64 * 2**20


def test_the_backbone_trains_at_the_heads_lr_unless_a_scale_is_set_and_a_resume_keeps_its_own():
    # 1.0, not the 0.4 tuned on photos: 1.0 fine-tuned best both on photos and on digits (BENCHMARKS.md,
    # "The backbone lr on data far from ImageNet").
    assert build([]).optimisation.backbone_lr_scale == 1.0
    p = build(["optimizer.backbone_lr_scale=0.4"])
    assert p.optimisation.backbone_lr_scale == 0.4
    assert p.summary()["backbone_lr"] == pytest.approx(0.4 * p.recipe.lr)
    assert (
        build(["optimizer.backbone_lr_scale=0.4", "model.pretrained=false"]).optimisation.backbone_lr_scale
        == 1.0
    )
    p = build([], resumed=plan.Resumed("x/last.ckpt", 3, 10, 0.4))  # a checkpoint made with another scale
    assert p.optimisation.backbone_lr_scale == 0.4


@pytest.mark.gpu
def test_gpu_auto_picks_the_tier_of_this_cuda_device():
    import torch

    device = plan.probe_device(compose_cfg([]).trainer)
    assert device.cuda and device.memory_bytes == torch.cuda.get_device_properties(0).total_memory
    p = build(["gpu=auto"], device=device)
    tiers = compose_cfg([]).gpu.tiers
    assert p.tier == recipes.pick_tier(tiers, device.memory_bytes) != "cpu"
    assert (p.accelerator, p.precision, p.runtime.channels_last) == ("cuda", "bf16-mixed", True)
    assert p.batches.tier_bytes == round(tiers[p.tier].memory_gb * 1e9) and p.batches.peak_bytes


def test_the_plan_and_the_log_say_what_was_adjusted(tmp_path, monkeypatch, caplog):
    """A class with one image has no validation image, a batch larger than the training set is
    shrunk: both are plan rows (dry run) and warnings in the run's log."""
    import logging

    from effnet.training.train import prepare_run_dir

    monkeypatch.chdir(tmp_path)
    root = make_images(tmp_path / "data", {"ant": 6, "bee": 6, "moth": 1})
    cfg = compose_cfg(
        [f"data.root={root}", "trainer.accelerator=cpu", "model.pretrained=false", "batch_size=64"]
    )
    resolved, split, report = plan.resolve(cfg)
    assert (resolved.data.train, resolved.recipe.batch_size, resolved.batches.micro_batch) == (11, 11, 11)
    adjusted = [
        "class moth has a single image: it is used for training, so no validation image is held out for it "
        "and its accuracy is not measured; add images to it",
        "batch_size=64 is larger than the 11 training images: shrunk to 11 (one optimizer step per epoch)",
    ]
    assert set(adjusted) <= {value for key, value in plan.plan_rows(resolved) if key == "warning"}
    (tmp_path / "run").mkdir()
    with caplog.at_level(logging.WARNING, logger="effnet"):
        prepare_run_dir(tmp_path / "run", resolved, split, report)
    assert all(line in caplog.text for line in adjusted)

    make_images(tmp_path / "layout" / "train", {"ant": 4, "bee": 4})
    make_images(tmp_path / "layout" / "val", {"ant": 2})
    layout, _, _ = plan.resolve(compose_cfg([f"data.root={tmp_path / 'layout'}", "trainer.accelerator=cpu"]))
    assert (
        "class bee has no validation image (none in the validation folder): its accuracy is not measured"
        in layout.warnings
    )


def test_the_plan_predicts_a_cpu_steps_ram_and_refuses_a_step_that_cannot_fit(
    flat_folder, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    base = [
        f"data.root={flat_folder}",
        "trainer.accelerator=cpu",
        "model.pretrained=false",
        "data.cache=none",
    ]
    resolved, _, _ = plan.resolve(compose_cfg(base))
    micro = resolved.batches.micro_batch
    cost = memory.costs("efficientnet_b0", "32-true")[False]  # memory.csv's measured B0
    assert resolved.step_memory == recipes.cpu_step_bytes(cost, 224, micro)
    assert dict(plan.plan_rows(resolved))["memory"].startswith(
        f"~{resolved.step_memory / 1e9:.1f} GB of RAM per training step for micro-batch {micro} at 224 px "
        f"(the process with its tensors; {resolved.ram_available / 1e9:.1f} GB available, a run plans on 85%)"
    )
    with pytest.raises(UserError) as raised:  # 8 TB a step: too big for any machine this runs on
        plan.resolve(compose_cfg([*base, "image_size=65536"]))
    assert re.fullmatch(
        r"image_size=65536: a training step on the CPU needs ~\d+\.\d GB of RAM even at micro-batch 1, more than "
        r"the \d+\.\d GB a run may take \(85% of the \d+\.\d GB available\); image_size=\d+ or smaller fits "
        r"\(or train on a GPU, or free memory\)",
        str(raised.value),
    ), str(raised.value)


def test_lr_find_plans_the_finders_sweep_and_the_dry_run_says_so():
    # 244 images in whole batches of 32: 7 steps an epoch
    p = build(
        ["lr=find", "batch_size=32", "epochs=2", "lr_find.max_lr=0.1", "optimizer.backbone_lr_scale=0.4"]
    )
    assert p.lr_find == plan.LrFind(min_lr=1e-7, max_lr=0.1, steps=14)  # fewer than lr_find.steps
    assert p.recipe.lr == build(["batch_size=32"]).recipe.lr  # the row's meanwhile: nothing trains with it
    assert dict(plan.plan_rows(p))["lr"] == (
        "find (the finder runs on a real start): the head's lr from 1e-07 to 0.1 over 14 steps; "
        "the pretrained backbone's follows at x0.4; nothing is trained"
    )
    same = build(["lr=find", "epochs=30"])  # the default scale, 1.0: one lr for every layer
    assert same.lr_find.steps == 100  # lr_find.steps
    assert dict(plan.plan_rows(same))["lr"].endswith(
        "the lr (one for every layer) from 1e-07 to 1 over 100 steps; nothing is trained"
    )
    assert build(["lr=1e-3"]).lr_find is None
    with pytest.raises(
        UserError, match=r"lr=find: this run takes 5 optimizer step\(s\) \(1 epoch\(s\) x 5\)"
    ):
        build(["lr=find", "epochs=1", "batch_size=32", "trainer.limit_train_batches=5"])
