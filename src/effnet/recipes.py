"""Recipe arithmetic: which data-size row applies, and how a GPU tier splits the batch.

The numbers live in YAML (conf/data_size, conf/gpu, conf/model); the rules that combine them
live here, in plain functions with unit tests. Nothing in this module imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

# The data-size recipes are EfficientNet-B0 recipes: B0's paper dropout is their reference point.
REFERENCE_DROPOUT = 0.2
MAX_DROPOUT = 0.5
AUG_LEVELS = ("light", "standard", "heavy")


@dataclass(frozen=True)
class Recipe:
    data_size: str
    lr: float
    epochs: int
    batch_size: int
    dropout: float
    aug: str


@dataclass(frozen=True)
class BatchPlan:
    """How `batch_size` is reached: micro_batch x accumulate x devices == batch_size."""

    batch_size: int
    devices: int
    micro_batch: int
    accumulate: int
    grad_checkpointing: bool
    capacity: int | None  # the micro-batch the tier can hold; None = no ceiling (cpu)


def pick_data_size(rows: Mapping[str, Mapping], num_images: int) -> str:
    """The first row (by max_images, smallest first) whose max_images is above num_images."""
    bounded = sorted((r["max_images"], name) for name, r in rows.items() if r["max_images"] is not None)
    for max_images, name in bounded:
        if num_images < max_images:
            return name
    unbounded = [name for name, r in rows.items() if r["max_images"] is None]
    return unbounded[0] if unbounded else bounded[-1][1]


def head_dropout(row_dropout: float, model_dropout: float) -> float:
    """Shift the variant's own dropout by what the B0 recipe adds or removes, capped at 0.5.

    B0 gets the row's number exactly; B4 (paper 0.4) on small data (0.3 = B0 + 0.1) gets 0.5.
    """
    return round(min(max(model_dropout + row_dropout - REFERENCE_DROPOUT, 0.0), MAX_DROPOUT), 4)


def resolve_recipe(overrides: Mapping, row_name: str, row: Mapping, model_dropout: float) -> Recipe:
    """Top-level values (user or preset) win; the row fills what is left (null)."""

    def pick(key):
        return overrides.get(key) if overrides.get(key) is not None else row[key]

    dropout = overrides.get("dropout")
    if dropout is None:
        dropout = head_dropout(row["dropout"], model_dropout)
    return Recipe(
        data_size=row_name,
        lr=float(pick("lr")),
        epochs=int(pick("epochs")),
        batch_size=int(pick("batch_size")),
        dropout=float(dropout),
        aug=str(pick("aug")),
    )


def micro_batch_capacity(b0_batch: int, memory_factor: float, image_size: int) -> int:
    """What fits on the tier: B0's 224 px micro-batch scaled by activation memory (~ res^2 x model)."""
    scale = memory_factor * (image_size / 224) ** 2
    return max(1, math.floor(b0_batch / scale))


def plan_batches(
    batch_size: int,
    devices: int,
    *,
    b0_batch: int | None,
    memory_factor: float,
    image_size: int,
    min_micro_batch: int = 8,
    checkpointing_gain: float = 3.0,
    grad_checkpointing: bool | None = None,
) -> BatchPlan:
    """Split the effective batch over devices and accumulation steps within the tier's memory.

    The micro-batch is the largest divisor of the per-device batch that fits, so the effective batch
    is exactly `batch_size`. When even `min_micro_batch` images do not fit (batch norm gets noisy
    below that), gradient checkpointing is turned on unless the user said grad_checkpointing=false.
    """
    if batch_size % devices:
        lower, upper = (batch_size // devices) * devices, (batch_size // devices + 1) * devices
        options = " or ".join(str(b) for b in (lower, upper) if b > 0)
        raise ValueError(
            f"batch_size={batch_size} cannot be split evenly over {devices} devices; use batch_size={options}"
        )
    per_device = batch_size // devices
    if b0_batch is None:
        return BatchPlan(batch_size, devices, per_device, 1, bool(grad_checkpointing), None)
    capacity = micro_batch_capacity(b0_batch, memory_factor, image_size)
    checkpointing = grad_checkpointing
    if checkpointing is None:
        checkpointing = capacity < min(min_micro_batch, per_device)
    if checkpointing:
        capacity = max(1, math.floor(capacity * checkpointing_gain))
    micro = max(d for d in range(1, per_device + 1) if per_device % d == 0 and d <= capacity)
    return BatchPlan(batch_size, devices, micro, per_device // micro, bool(checkpointing), capacity)


def pick_tier(tiers: Mapping[str, Mapping], memory_bytes: int | None) -> str:
    """The largest tier whose memory_gb the device has (5% slack for what drivers reserve)."""
    if not memory_bytes:
        return "cpu"
    fitting = [
        (t["memory_gb"], name)
        for name, t in tiers.items()
        if t["memory_gb"] is not None and t["memory_gb"] * 0.95 <= memory_bytes / 1e9
    ]
    return (
        max(fitting)[1]
        if fitting
        else min((t["memory_gb"], n) for n, t in tiers.items() if t["memory_gb"])[1]
    )


def pick_precision(user_precision: str | int | None, on_cuda: bool, bf16_supported: bool) -> str:
    """bf16-mixed where the GPU supports it, else 16-mixed; full precision on CPU. The user wins."""
    if user_precision is not None:
        return str(user_precision)
    if not on_cuda:
        return "32-true"
    return "bf16-mixed" if bf16_supported else "16-mixed"


def backbone_lr_scale(scale: float, pretrained: bool) -> float:
    """The backbone's share of the learning rate: lower than the new head's when the backbone
    starts from pretrained weights, so fine-tuning adapts the features instead of overwriting them
    with the gradients of a randomly initialised head (fastai's discriminative learning rates).
    A backbone from random init trains at the full rate."""
    return float(scale) if pretrained else 1.0


def loader_workers(cores: int, devices_per_node: int) -> int:
    """One loader process per core left over after the training processes, at most 8 per process."""
    return max(1, min(8, cores // max(1, devices_per_node) - 1))


def intra_op_threads(cores: int, devices_per_node: int, workers: int) -> int:
    """Each training process's intra-op threads: its share of the cores, minus its loader workers.

    Threads that compete with the workers for a core slow both (on a loaded 2-core box a B0
    forward took 0.07 s with 1 thread and 3.2 s with 2), so the workers get their cores first.
    """
    return max(1, cores // max(1, devices_per_node) - workers)


CACHE_MODES = ("none", "ram", "disk", "auto")
# `auto` keeps the store in RAM only when it takes at most this share of the memory available
# now: the model, the loader workers and the page cache need the rest.
CACHE_RAM_SHARE = 0.5


def decode_size(image_size: int, min_scale: float) -> int:
    """The short side a training image needs so that even the smallest random-resized crop
    (`min_scale` of the area) is not upsampled: image_size / sqrt(min_scale)."""
    return math.ceil(image_size / math.sqrt(min_scale))


def stored_side(short: int, side: int, jpeg: bool = True) -> int:
    """About how long the short side of an image is once decoded for training
    (effnet.data.cache.base_image): a JPEG decodes at 1/2, 1/4 or 1/8 scale while that stays
    >= `side`, then any image still twice `side` or more is reduced by an integer factor."""
    if jpeg:
        scale = next(s for s in (8, 4, 2, 1) if s <= max(1, short // side))
        short = math.ceil(short / scale)
    return math.ceil(short / (short // side)) if short >= 2 * side else short


def cache_bytes(sizes: Sequence[tuple[int, int, bool]], count: int, side: int) -> int:
    """Estimated bytes of the uint8 store for `count` images, from a sample of their
    (width, height, is JPEG)."""
    if not sizes or not count:
        return 0
    total = 0
    for w, h, jpeg in sizes:
        short, long = min(w, h), max(w, h)
        s = stored_side(short, side, jpeg)
        total += 3 * s * math.ceil(long * s / short)
    return round(total / len(sizes) * count)


def choose_cache(
    requested: str, store_bytes: int, available_bytes: int | None, processes: int
) -> tuple[str, str]:
    """(cache mode, why). Each training process on the node keeps its own RAM store, so `auto`
    picks RAM only when all of them fit in CACHE_RAM_SHARE of the memory available now."""
    need = store_bytes * max(1, processes)
    size = f"~{_gb(need)}" + (f" for {processes} processes" if processes > 1 else "")
    if requested != "auto":
        return requested, f"data.cache={requested}" + (f", {size}" if requested != "none" else "")
    if available_bytes is None:
        return "none", "auto: free memory unknown; data.cache=ram or disk to decode each image once"
    free = _gb(available_bytes)
    if need <= CACHE_RAM_SHARE * available_bytes:
        return "ram", f"auto: the store ({size}) fits in RAM ({free} available)"
    return "none", (
        f"auto: the store ({size}) would take more than {CACHE_RAM_SHARE:.0%} of the {free} available; "
        "data.cache=disk keeps it in outputs/cache/"
    )


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


# ---------------------------------------------------------------------------------------------
# RAM of a training step on the CPU (the GPU tiers above size the GPU's memory)

# Bytes a fp32 training step keeps per input pixel per image for EfficientNet-B0 (activations saved
# for the backward pass, their gradients, the allocator's slack), measured once with timm's
# efficientnet_b0 and AdamW on a CPU (torch 2.x): peak RSS grew ~2.2-2.45 kB per pixel-image
# between 128 px x 2 and 384 px x 4 images; the upper end is taken. Other backbones scale it by
# their model.memory_factor, as the GPU tiers do (mobilenetv3_small measured 0.17x; its factor,
# 0.3, errs high).
B0_CPU_BYTES_PER_PIXEL = 2450
STATE_COPIES = 4  # weights, gradients and AdamW's two moments, fp32 each (+1 with an EMA)
# torch, timm and the model: ~1.0 GB of RSS before the first step, measured with the above
RUNTIME_BYTES = 1_100_000_000
RAM_SHARE = 0.85  # of the RAM available, what a run plans to take: the machine keeps the rest


def cpu_step_bytes(
    parameters: int, image_size: int, micro_batch: int, memory_factor: float, ema: bool = False
) -> int:
    """Peak RAM of one training step of one process on the CPU: the runtime, the parameters'
    fp32 copies, and the activations of `micro_batch` images."""
    state = parameters * 4 * (STATE_COPIES + (1 if ema else 0))
    activations = B0_CPU_BYTES_PER_PIXEL * memory_factor * image_size**2 * micro_batch
    return int(RUNTIME_BYTES + state + activations)


def largest_cpu_image(parameters: int, memory_factor: float, budget: int, ema: bool = False) -> int:
    """The largest image size (a multiple of 32) whose step at micro-batch 1 fits in `budget` bytes;
    0 when none does."""
    room = budget - cpu_step_bytes(parameters, 0, 1, memory_factor, ema)
    if room <= 0:
        return 0
    side = math.isqrt(int(room / (B0_CPU_BYTES_PER_PIXEL * memory_factor)))
    return side // 32 * 32


def fit_cpu_memory(
    batches: BatchPlan,
    parameters: int,
    image_size: int,
    memory_factor: float,
    processes: int,
    available: int,
    ema: bool = False,
) -> tuple[BatchPlan, int, list[str]]:
    """(the batch plan, the predicted peak RAM of a step of all `processes`, warnings): the
    micro-batch lowered (accumulating more) until a step fits in RAM_SHARE of the `available`
    memory, or ValueError naming the image size that would fit when not even one image does."""

    def need(micro: int) -> int:
        return processes * cpu_step_bytes(parameters, image_size, micro, memory_factor, ema)

    budget = int(available * RAM_SHARE)
    per_device = batches.micro_batch * batches.accumulate
    if need(batches.micro_batch) <= budget:
        return batches, need(batches.micro_batch), []
    fitting = [d for d in range(1, batches.micro_batch) if per_device % d == 0 and need(d) <= budget]
    if not fitting:
        fits = largest_cpu_image(parameters, memory_factor, budget // processes, ema)
        hint = f"image_size={fits} or smaller fits" if fits >= 32 else "no image size fits"
        raise ValueError(
            f"image_size={image_size}: a training step on the CPU needs ~{need(1) / 1e9:.1f} GB of RAM even at "
            f"micro-batch 1, more than the {budget / 1e9:.1f} GB a run may take ({RAM_SHARE:.0%} of the "
            f"{available / 1e9:.1f} GB available); {hint} (or train on a GPU, or free memory)"
        )
    micro = max(fitting)
    lowered = replace(batches, micro_batch=micro, accumulate=per_device // micro)
    return (
        lowered,
        need(micro),
        [
            f"micro-batch lowered from {batches.micro_batch} to {micro} (accumulating {per_device // micro}) so "
            f"that a training step fits in RAM: ~{need(batches.micro_batch) / 1e9:.1f} GB at {batches.micro_batch}, "
            f"~{need(micro) / 1e9:.1f} GB now, {available / 1e9:.1f} GB available"
        ],
    )
