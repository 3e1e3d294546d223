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
# lr=find: Lightning's suggestion skips the sweep's first 10 points and its last, and needs 2 more
# to take a gradient.
LR_FIND_MIN_STEPS = 13


@dataclass(frozen=True)
class Recipe:
    data_size: str
    lr: float
    epochs: int
    batch_size: int
    dropout: float
    aug: str


@dataclass(frozen=True)
class MemoryCost:
    """What one training step of a model holds in GPU memory, in bytes: one row of the measured
    memory model (effnet/memory.csv, written by `python -m effnet.memory`) at one precision, with
    or without gradient checkpointing."""

    native_size: int  # the image size the activations were measured at
    weights: int
    gradients: int  # as large as the fp32 weights; kept between the micro-batches of an accumulation
    optimizer: int  # AdamW's two moments per weight
    constant: int  # saved tensors that do not grow with the batch (autocast's bf16 weight copies)
    per_image: float  # saved activations per image at native_size (+ the largest recomputed segment)

    def activations(self, micro_batch: int, image_size: int) -> float:
        """Activations grow with the pixels: the measured per-image bytes x (size / native)^2."""
        return micro_batch * self.per_image * (image_size / self.native_size) ** 2

    def fixed(self, ema: bool = False) -> int:
        """Everything that does not grow with the batch; an EMA keeps one more copy of the weights."""
        return self.weights * (2 if ema else 1) + self.gradients + self.optimizer + self.constant


@dataclass(frozen=True)
class MemoryBudget:
    """A GPU tier's memory and what of it the tensors of a training step can take."""

    tier_bytes: int  # memory_gb x 10^9: the least a card of the tier has (an "8 GB" card has 8 GiB)
    usable_fraction: float  # the allocator's fragmentation and cuDNN's workspaces take the rest
    cuda_overhead: int  # the CUDA context and library kernels: outside PyTorch's allocator

    @property
    def usable(self) -> float:
        return self.tier_bytes * self.usable_fraction - self.cuda_overhead


def memory_budget(memory_gb: float, usable_fraction: float, cuda_overhead_gb: float) -> MemoryBudget:
    """A tier's budget from its memory_gb and the shared `gpu:` settings (conf/train.yaml)."""
    return MemoryBudget(
        tier_bytes=round(float(memory_gb) * 1e9),
        usable_fraction=float(usable_fraction),
        cuda_overhead=round(float(cuda_overhead_gb) * 1e9),
    )


def peak_terms(
    cost: MemoryCost, micro_batch: int, image_size: int, cuda_overhead: int, ema: bool = False
) -> dict[str, int]:
    """The predicted peak of one training step, term by term: what torch.cuda.max_memory_allocated
    reports (every term but the CUDA context) plus the context itself. The peak comes when the
    backward pass starts, when every saved activation is still held."""
    return {
        "activations": round(cost.activations(micro_batch, image_size)),
        "CUDA context": int(cuda_overhead),
        "weights": cost.weights * (2 if ema else 1),
        "gradients": cost.gradients,
        "AdamW state": cost.optimizer,
        "constant": cost.constant,
    }


def micro_batch_capacity(cost: MemoryCost, budget: MemoryBudget, image_size: int, ema: bool = False) -> int:
    """How many images of `image_size` fit on the tier:
    (tier bytes x usable fraction - CUDA overhead - fixed bytes) / activation bytes per image.
    0 when not even one does."""
    per_image = cost.activations(1, image_size)
    return max(0, math.floor((budget.usable - cost.fixed(ema)) / per_image))


@dataclass(frozen=True)
class BatchPlan:
    """How `batch_size` is reached: micro_batch x accumulate x devices == batch_size."""

    batch_size: int
    devices: int
    micro_batch: int
    accumulate: int
    grad_checkpointing: bool
    capacity: int | None  # the micro-batch the tier can hold; None = no ceiling (cpu)
    peak: tuple[tuple[str, int], ...] = ()  # the micro-batch's predicted peak by term (peak_terms)
    tier_bytes: int | None = None
    usable_bytes: int | None = None  # tier_bytes x usable fraction

    @property
    def peak_bytes(self) -> int | None:
        return sum(b for _, b in self.peak) if self.peak else None


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


def plan_batches(
    batch_size: int,
    devices: int,
    *,
    costs: Mapping[bool, MemoryCost] | None,
    budget: MemoryBudget | None,
    image_size: int,
    min_micro_batch: int = 8,
    grad_checkpointing: bool | None = None,
    ema: bool = False,
) -> BatchPlan:
    """Split the effective batch over devices and accumulation steps within the tier's memory.

    `costs` holds the model's measured memory without (False) and with (True) gradient
    checkpointing; `budget` is None on the cpu tier (no ceiling). The micro-batch is the largest
    divisor of the per-device batch that fits, so the effective batch is exactly `batch_size`.
    When even `min_micro_batch` images do not fit (batch norm gets noisy below that), gradient
    checkpointing is turned on unless the user said grad_checkpointing=false: its capacity comes
    from the measured checkpointed activations, not from a guessed gain.
    """
    if batch_size % devices:
        lower, upper = (batch_size // devices) * devices, (batch_size // devices + 1) * devices
        options = " or ".join(str(b) for b in (lower, upper) if b > 0)
        raise ValueError(
            f"batch_size={batch_size} cannot be split evenly over {devices} devices; use batch_size={options}"
        )
    per_device = batch_size // devices
    if budget is None or costs is None:
        checkpointing = bool(grad_checkpointing)
        cost = costs[checkpointing] if costs else None
        peak = peak_terms(cost, per_device, image_size, 0, ema) if cost else {}
        peak.pop("CUDA context", None)  # no GPU: the step's tensors live in host memory
        return BatchPlan(batch_size, devices, per_device, 1, checkpointing, None, tuple(peak.items()))
    capacity = micro_batch_capacity(costs[False], budget, image_size, ema)
    checkpointing = grad_checkpointing
    if checkpointing is None:
        checkpointing = capacity < min(min_micro_batch, per_device)
    if checkpointing:
        capacity = micro_batch_capacity(costs[True], budget, image_size, ema)
    micro = max(d for d in range(1, per_device + 1) if per_device % d == 0 and d <= max(1, capacity))
    peak = peak_terms(costs[bool(checkpointing)], micro, image_size, budget.cuda_overhead, ema)
    return BatchPlan(
        batch_size,
        devices,
        micro,
        per_device // micro,
        bool(checkpointing),
        capacity,
        tuple(peak.items()),
        budget.tier_bytes,
        round(budget.tier_bytes * budget.usable_fraction),
    )


def precision_kind(precision: str | int) -> str:
    """The row of the memory model a Lightning precision reads: 16-bit autocast or half weights
    store activations in 2 bytes ("bf16": fp16 has the same sizes), everything else in 4."""
    return "bf16" if "16" in str(precision) else "fp32"


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


def compile_network(setting: str | bool, cuda: bool, steps: int, min_steps: int) -> tuple[bool, str]:
    """model.compile: whether to torch.compile the network, and why.

    A cold compile costs minutes (90-150 s for Lite0 and B0 on 2 CPU cores) and saves a share of
    each step, so `auto` compiles only a run long enough to repay it: a CUDA run of at least
    `min_steps` optimizer steps. Never on the CPU, where the step ran 1.01-1.25x faster
    (BENCHMARKS.md, "torch.compile on the CPU"): 300 to 9,000 steps to break even, if ever.
    """
    if setting != "auto":
        return bool(setting), f"model.compile={str(setting).lower()}"
    if not cuda:
        return False, "auto: not on the CPU (1.01-1.25x a step for a 90-150 s compile)"
    if steps < min_steps:
        return False, f"auto: {steps} optimizer steps, fewer than model.compile_min_steps={min_steps}"
    return True, f"auto: {steps} optimizer steps repay the compile (model.compile_min_steps={min_steps})"


def steps_per_epoch(
    train_images: int, micro_batch: int, accumulate: int, world: int, limit_train_batches=None
) -> int:
    """Optimizer steps in one epoch, as Lightning counts them: each process's share of the images
    (its sampler pads to equal shares), whole micro-batches when there are more images than one
    (the loader's drop_last), trainer.limit_train_batches (a count, or a fraction of the batches),
    and a step per `accumulate` micro-batches, the epoch's last partial group included."""
    share = math.ceil(train_images / max(1, world))
    batches = share // micro_batch if share > micro_batch else 1
    if isinstance(limit_train_batches, int) and not isinstance(limit_train_batches, bool):
        batches = min(batches, limit_train_batches)
    elif isinstance(limit_train_batches, float) and limit_train_batches < 1:
        batches = int(batches * limit_train_batches)
    return math.ceil(batches / max(1, accumulate))


def finder_steps(wanted: int, epoch_steps: int, epochs: int) -> int:
    """lr=find's steps: `wanted` (lr_find.steps), or as many as the run itself takes when it takes
    fewer: the finder explores no more optimizer steps than training would. ValueError when that is
    too few for a suggestion."""
    available = epoch_steps * epochs
    if available < LR_FIND_MIN_STEPS:
        needed = math.ceil(LR_FIND_MIN_STEPS / max(1, epoch_steps))
        raise ValueError(
            f"lr=find: this run takes {available} optimizer step(s) ({epochs} epoch(s) x {epoch_steps}), "
            f"fewer than the {LR_FIND_MIN_STEPS} the finder's suggestion needs; give it more: "
            f"epochs={needed}" + (" or a smaller batch_size" if epoch_steps else "")
        )
    return min(wanted, available)


def loader_workers(cores: int, devices_per_node: int) -> int:
    """One loader process per core left over after the training processes, at most 8 per process."""
    return max(1, min(8, cores // max(1, devices_per_node) - 1))


def intra_op_threads(
    cores: int, devices_per_node: int, workers: int, cuda: bool = True, cap: int | None = None
) -> int:
    """Each training process's intra-op threads.

    With a GPU the loader workers are the busy processes (decoding and augmenting for a step that
    takes milliseconds), so they get their cores first and the training process the rest: threads
    that compete with the workers for a core slow both (on a loaded 2-core box a B0 forward took
    0.07 s with 1 thread and 3.2 s with 2).

    On a CPU-only run the training process *is* the compute: a Lite0 step at 224 px takes about
    100 ms an image, while a worker decodes and crops one in a few ms (none at all after a RAM-cached
    first epoch), so a worker keeps its core busy a few percent of the time. The training process
    takes all of its share of the cores, and the workers run at a lower priority
    (`LOADER_NICE_ON_CPU`) so that they use what the step leaves rather than stall it: 1.30x
    faster at 224 px on 2 cores (BENCHMARKS.md, "Training speed").

    cap: OMP_NUM_THREADS when it is set. Whoever set it knows what else shares the cores (torchrun
    sets 1 for several processes a node, a batch system its allotment, a test runner its workers):
    threads beyond it would compete with those processes for a core and wait on them.
    """
    share = cores // max(1, devices_per_node)
    threads = max(1, share - workers if cuda else share)
    return min(threads, cap) if cap else threads


# A CPU-only run's loader workers yield to the training step's threads (os.nice; 19 is the lowest
# priority): they still get every cycle the step leaves, which keeps a cold epoch fed.
LOADER_NICE_ON_CPU = 10


def loader_nice(cuda: bool) -> int:
    """How much lower the loader workers' priority is than the training process's."""
    return 0 if cuda else LOADER_NICE_ON_CPU


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
    (effnet.data.decode.base_image): a JPEG decodes at 1/2, 1/4 or 1/8 scale while that stays
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

# On the CPU a step's resident memory grows by more than the saved activations memory.csv counts
# (their gradients during the backward pass, the allocator's slack). Measured once with timm's
# efficientnet_b0, AdamW, fp32, 128-384 px x 2-4 images: peak RSS grew 2.2-2.45 kB per
# pixel-image against memory.csv's 1.76 kB of saved tensors; the upper end, 1.4x, is taken.
CPU_ACTIVATION_SLACK = 1.4
# torch, timm and the model: ~1.0 GB of RSS before the first step, measured with the above
RUNTIME_BYTES = 1_100_000_000
RAM_SHARE = 0.85  # of the RAM available, what a run plans to take: the machine keeps the rest


def cpu_step_bytes(cost: MemoryCost, image_size: int, micro_batch: int, ema: bool = False) -> int:
    """Peak RAM of one training step of one process on the CPU: the runtime, the fp32 weights,
    gradients and AdamW state, and the activations of `micro_batch` images with the CPU's slack."""
    return int(
        RUNTIME_BYTES + cost.fixed(ema) + CPU_ACTIVATION_SLACK * cost.activations(micro_batch, image_size)
    )


def largest_cpu_image(cost: MemoryCost, budget: int, ema: bool = False) -> int:
    """The largest image size (a multiple of 32) whose step at micro-batch 1 fits in `budget`
    bytes; 0 when none does."""
    room = budget - cpu_step_bytes(cost, cost.native_size, 0, ema)
    if room <= 0:
        return 0
    side = int(cost.native_size * math.sqrt(room / (CPU_ACTIVATION_SLACK * cost.per_image)))
    return side // 32 * 32


def fit_cpu_memory(
    batches: BatchPlan,
    cost: MemoryCost,
    image_size: int,
    processes: int,
    available: int,
    ema: bool = False,
) -> tuple[BatchPlan, int, list[str]]:
    """(the batch plan, the predicted peak RAM of a step of all `processes`, warnings): the
    micro-batch lowered (accumulating more) until a step fits in RAM_SHARE of the `available`
    memory, or ValueError naming the image size that would fit when not even one image does."""

    def need(micro: int) -> int:
        return processes * cpu_step_bytes(cost, image_size, micro, ema)

    budget = int(available * RAM_SHARE)
    per_device = batches.micro_batch * batches.accumulate
    if need(batches.micro_batch) <= budget:
        return batches, need(batches.micro_batch), []
    fitting = [d for d in range(1, batches.micro_batch) if per_device % d == 0 and need(d) <= budget]
    if not fitting:
        fits = largest_cpu_image(cost, budget // processes, ema)
        hint = f"image_size={fits} or smaller fits" if fits >= 32 else "no image size fits"
        raise ValueError(
            f"image_size={image_size}: a training step on the CPU needs ~{need(1) / 1e9:.1f} GB of RAM even at "
            f"micro-batch 1, more than the {budget / 1e9:.1f} GB a run may take ({RAM_SHARE:.0%} of the "
            f"{available / 1e9:.1f} GB available); {hint} (or train on a GPU, or free memory)"
        )
    micro = max(fitting)
    peak = peak_terms(cost, micro, image_size, 0, ema)
    peak.pop("CUDA context", None)
    lowered = replace(batches, micro_batch=micro, accumulate=per_device // micro, peak=tuple(peak.items()))
    return (
        lowered,
        need(micro),
        [
            f"micro-batch lowered from {batches.micro_batch} to {micro} (accumulating {per_device // micro}) so "
            f"that a training step fits in RAM: ~{need(batches.micro_batch) / 1e9:.1f} GB at {batches.micro_batch}, "
            f"~{need(micro) / 1e9:.1f} GB now, {available / 1e9:.1f} GB available"
        ],
    )
