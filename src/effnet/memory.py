"""What a training step holds in GPU memory, measured per model: `python -m effnet.memory`.

The GPU tiers' micro-batches (effnet.recipes.plan_batches) come from this measurement, not from
guessed ratios. For each model of conf/model/, at timm's native input size (its pretrained_cfg),
in fp32 and in bf16 autocast, with and without gradient checkpointing (timm's
set_grad_checkpointing), channels_last as the plan uses on a GPU, it counts:

- weights and gradients: the parameters' bytes (gradients are fp32 like the weights, also under
  autocast); AdamW state: the tensors timm's AdamW creates in its first step;
- saved activations: every tensor autograd saves for the backward pass, seen by
  torch.autograd.graph.saved_tensors_hooks and deduplicated by storage (a tensor saved by two
  operations, or two views of one buffer, is one allocation), plus the input batch (uint8 and its
  normalised float copy), which the step holds throughout; the weights themselves are left
  out, they are counted above. Two batch sizes separate what grows with the batch from what
  does not (autocast's bf16 copies of the weights);
- with checkpointing, autograd keeps only each checkpointed segment's input, and the backward pass
  recomputes one segment at a time: the largest segment's saved tensors are added to the per-image
  bytes (each segment is run once more, uncheckpointed, under its own hooks, to count them).

The count runs under FakeTensorMode: tensors carry shapes, dtypes and storages but no data, so B7 at
600 px is measured on a laptop CPU in seconds without allocating its gigabytes. `measure(...,
fake=False)` runs the same count on real CPU tensors; the tests check that the two agree and that
B0's row of memory.csv is reproduced. bf16 is CPU autocast: it casts convolutions and linear
layers to bf16 and leaves batch norm, SiLU and the squeeze-excite ops in their input's dtype, as
CUDA autocast does (the losses run in fp32 on both). CUDA autocast runs layer norms in fp32 and
CPU autocast does not, so a ViT's bf16 row is a lower bound.

Peak memory is not only tensors: the CUDA context and the allocator's fragmentation are the
`gpu.cuda_overhead_gb` and `gpu.usable_fraction` settings (conf/train.yaml); scripts/gpu-check.sh
measures both, and the prediction, on a GPU.

    python -m effnet.memory                  measure every model of conf/model/ into memory.csv
                                             (and write docs/recipes.md's tier tables from it)
    python -m effnet.memory --models b0,b4   only these (their rows are replaced)
    python -m effnet.memory --tables         print docs/recipes.md's tier tables from memory.csv
    python -m effnet.memory --write-tables   write them into docs/recipes.md, between its markers
    python -m effnet.memory --gpu-check      measure peak CUDA memory against the prediction

Importing this module imports no torch: the plan reads memory.csv through it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import io
import math
import platform
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

from effnet import CONF_DIR, recipes

CSV_PATH = Path(__file__).with_name("memory.csv")
TABLES_PAGE = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"  # "GPU memory tiers"
PRECISIONS = ("fp32", "bf16")
BATCHES = (
    2,
    4,
)  # any two sizes separate the per-image part from the constant part; fake tensors cost nothing
CLASSES = 10  # the head's size hardly matters: 1280 x 10 weights against B0's 4 million
TABLE_START = "<!-- memory tables: python -m effnet.memory --write-tables -->"
TABLE_END = "<!-- end of memory tables -->"


@dataclass(frozen=True)
class Row:
    """One line of memory.csv: a model at one precision, with or without checkpointing. Bytes."""

    model: str  # the conf/model/ name, e.g. b4
    backbone: str  # the timm name the plan looks rows up by
    image_size: int  # timm's native input size, where the activations were measured
    precision: str  # fp32 | bf16
    checkpointing: bool
    params: int
    weight_bytes: int
    grad_bytes: int
    adamw_bytes: int
    constant_bytes: int
    saved_bytes_per_image: int
    recompute_bytes_per_image: int  # the largest checkpointed segment, saved again in the backward pass

    @property
    def per_image(self) -> int:
        return self.saved_bytes_per_image + self.recompute_bytes_per_image

    def cost(self) -> recipes.MemoryCost:
        return recipes.MemoryCost(
            native_size=self.image_size,
            weights=self.weight_bytes,
            gradients=self.grad_bytes,
            optimizer=self.adamw_bytes,
            constant=self.constant_bytes,
            per_image=self.per_image,
        )


Key = tuple[str, str, bool]  # (backbone, precision, checkpointing)


# ---------------------------------------------------------------------------------------------
# Reading and writing memory.csv (no torch)


def read(path: Path = CSV_PATH) -> dict[Key, Row]:
    """The rows of a memory CSV; lines starting with # are its provenance."""
    return _read(str(path))


@cache
def _read(path: str) -> dict[Key, Row]:
    with open(path, newline="") as f:
        lines = [line for line in f if not line.startswith("#")]
    rows = {}
    for raw in csv.DictReader(lines):
        row = Row(
            **{
                f.name: (raw[f.name] == "true" if f.type == "bool" else _convert(f.type, raw[f.name]))
                for f in fields(Row)
            }
        )
        rows[(row.backbone, row.precision, row.checkpointing)] = row
    return rows


def _convert(kind: str, value: str):
    return int(value) if kind == "int" else value


def header(path: Path = CSV_PATH) -> list[str]:
    """The provenance lines (command, machine, date, versions) without their '# '."""
    with open(path) as f:
        return [line[2:].rstrip("\n") for line in f if line.startswith("#")]


def write(rows: Iterable[Row], path: Path, provenance: Sequence[str]) -> None:
    names = [f.name for f in fields(Row)]
    out = io.StringIO()
    for line in provenance:
        out.write(f"# {line}\n")
    writer = csv.DictWriter(out, names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        values = asdict(row)
        values["checkpointing"] = "true" if row.checkpointing else "false"
        writer.writerow(values)
    Path(path).write_text(out.getvalue())
    _read.cache_clear()


def costs(
    backbone: str, precision: str | int, rows: Mapping[Key, Row] | None = None
) -> dict[bool, recipes.MemoryCost] | None:
    """The measured costs of `backbone` under a Lightning precision, without (False) and with
    (True) gradient checkpointing; None when memory.csv has no row for it."""
    rows = read() if rows is None else rows
    kind = recipes.precision_kind(precision)
    found = {ck: rows.get((backbone, kind, ck)) for ck in (False, True)}
    if any(r is None for r in found.values()):
        return None
    return {ck: r.cost() for ck, r in found.items() if r is not None}


# ---------------------------------------------------------------------------------------------
# Measuring (torch)


def native_size(backbone: str) -> int:
    """timm's input size for the backbone's pretrained weights."""
    from effnet.preprocessing import pretrained_config

    size = pretrained_config(backbone).get("input_size") or (3, 224, 224)
    return int(size[-1])


def _storage(t) -> int:
    """One key per allocation. The storage's C++ object, not data_ptr: a fake tensor has no data
    pointer, and the hooks keep every saved storage alive, so no key is reused while counting."""
    return t.untyped_storage()._cdata


class _Saved:
    """saved_tensors_hooks that record each saved storage's bytes (the tensors pass through)."""

    def __init__(self) -> None:
        self.bytes: dict[int, int] = {}

    def hooks(self):
        import torch

        def pack(t):
            self.bytes[_storage(t)] = t.untyped_storage().nbytes()
            return t

        return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)

    def total(self, leave_out: set[int]) -> int:
        return sum(b for k, b in self.bytes.items() if k not in leave_out)


@contextlib.contextmanager
def _segments_counted(segments: list[int], leave_out: set[int]):
    """While active, every torch.utils.checkpoint.checkpoint call (timm's checkpoint_seq and
    checkpoint call it per segment) first runs its segment once uncheckpointed under its own
    hooks: what the backward pass will save when it recomputes that segment. The segment's input
    is held by the checkpoint already and is not counted again."""
    import torch
    import torch.utils.checkpoint as ckpt

    original = ckpt.checkpoint

    def counting(function, *args, **kwargs):
        saved = _Saved()
        inputs = {_storage(a) for a in args if isinstance(a, torch.Tensor)}
        with saved.hooks(), torch.enable_grad():
            function(*args)
        segments.append(saved.total(leave_out | inputs))
        return original(function, *args, **kwargs)

    ckpt.checkpoint = counting
    try:
        yield
    finally:
        ckpt.checkpoint = original


def _fakeify(net, mode) -> None:
    """Replace a meta-device module's parameters and buffers by fake CPU tensors of the same
    shape, dtype and memory format (module.to() cannot swap parameters into a fake mode)."""
    import torch
    from torch import nn

    converter, cpu = mode.fake_tensor_converter, torch.device("cpu")
    for module in net.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                fake = converter.from_meta_and_device(mode, p.data, cpu)
                module._parameters[name] = nn.Parameter(fake, requires_grad=p.requires_grad)
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = converter.from_meta_and_device(mode, b, cpu)


def _network(backbone: str, image_size: int, drop_path: float, fake: bool):
    """effnet's own network (timm backbone + head), channels_last, in training mode."""
    import torch

    from effnet.training.model import build

    classes = tuple(str(i) for i in range(CLASSES))
    with torch.device("meta") if fake else contextlib.nullcontext():
        net = build(backbone, classes, image_size, 0.2, (), drop_path)
    return net.to(memory_format=torch.channels_last).train()


def _adamw_bytes(net) -> int:
    """The bytes of the state timm's AdamW (as the module creates it) holds after one step."""
    import torch
    from timm.optim import create_optimizer_v2

    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer = create_optimizer_v2(net, opt="adamw", lr=1e-3, weight_decay=0.01)
    optimizer.step()
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    total = sum(t.untyped_storage().nbytes() for t in state)
    for p in net.parameters():
        p.grad = None
    return total


def _forward_saved(net, batch: int, size: int, precision: str, leave_out: set[int]) -> tuple[int, list[int]]:
    """(saved bytes, each checkpointed segment's saved bytes) of one training forward."""
    import torch
    import torch.nn.functional as F

    # The loader's uint8 batch and its normalised float copy (ClassifierModule.normalize) are held
    # for the whole step, whether or not an operation saves them.
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    x = ((images.float() - 127.5) / 64).contiguous(memory_format=torch.channels_last)
    y = torch.zeros(batch, dtype=torch.long)
    saved, segments = _Saved(), []
    for held in (images, x):
        saved.bytes[_storage(held)] = held.untyped_storage().nbytes()
    with (
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"),
        _segments_counted(segments, leave_out),
        saved.hooks(),
    ):
        F.cross_entropy(net(x), y, label_smoothing=0.1)
    return saved.total(leave_out), segments


def measure(
    backbone: str,
    precision: str,
    checkpointing: bool,
    *,
    model: str = "",
    image_size: int | None = None,
    batches: tuple[int, int] = BATCHES,
    fake: bool = True,
    drop_path: float = 0.2,
    optimizer: bool = True,
) -> Row:
    """One row: `backbone` at `image_size` (timm's native size by default) in `precision`.
    fake=False counts real CPU tensors (memory and time grow with the batch and the size);
    optimizer=False leaves AdamW's state at 0 bytes (a quicker count of the activations)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision}: one of {', '.join(PRECISIONS)}")
    size = image_size or native_size(backbone)
    net = _network(backbone, size, drop_path, fake)
    net.backbone.set_grad_checkpointing(checkpointing)
    mode = FakeTensorMode() if fake else contextlib.nullcontext()
    if fake:
        _fakeify(net, mode)
    params = list(net.parameters())
    weights = sum(p.untyped_storage().nbytes() for p in params)
    with mode, torch.random.fork_rng():
        torch.manual_seed(0)
        leave_out = {_storage(p) for p in params}
        samples = [_forward_saved(net, n, size, precision, leave_out) for n in batches]
        adamw = _adamw_bytes(net) if optimizer else 0
    (n1, (s1, r1)), (n2, (s2, r2)) = zip(batches, samples, strict=True)
    per_image = (s2 - s1) / (n2 - n1)
    # The segment that costs most per image (its constant part, bf16 weight copies, is counted once
    # in s1 already); segments run in the same order at both batch sizes.
    recompute = max(((b - a) / (n2 - n1) for a, b in zip(r1, r2, strict=True)), default=0)
    return Row(
        model=model or backbone,
        backbone=backbone,
        image_size=size,
        precision=precision,
        checkpointing=checkpointing,
        params=sum(p.numel() for p in params),
        weight_bytes=weights,
        grad_bytes=weights,  # a gradient has its parameter's shape and dtype (fp32 under autocast too)
        adamw_bytes=adamw,
        constant_bytes=max(0, round(s1 - n1 * per_image)),
        saved_bytes_per_image=round(per_image),
        recompute_bytes_per_image=round(recompute),
    )


def measure_backbone(backbone: str, model: str = "", image_size: int | None = None) -> list[Row]:
    """The four rows of one backbone (fp32/bf16 x without/with checkpointing)."""
    return [
        measure(backbone, precision, ck, model=model, image_size=image_size)
        for precision in PRECISIONS
        for ck in (False, True)
    ]


def provenance(command: str) -> list[str]:
    import timm
    import torch

    from effnet.bench.machine import cpu_name

    return [
        "effnet memory model: the bytes one training step holds (src/effnet/memory.py says how they are counted)",
        f"command: {command}",
        f"machine: {cpu_name()}, {platform.system()} {platform.machine()}, CPU only; FakeTensorMode (shapes, no data)",
        f"date: {datetime.date.today().isoformat()}",
        f"versions: torch {torch.__version__}, timm {timm.__version__}, python {platform.python_version()}",
        f"method: channels_last, batches {BATCHES[0]} and {BATCHES[1]}, {CLASSES}-class head, drop_path 0.2, "
        "AdamW (timm), bf16 = CPU autocast",
    ]


# ---------------------------------------------------------------------------------------------
# The configs the tables are made from (conf/, as Hydra composes them; no Hydra needed)


def model_configs(conf: Path = CONF_DIR) -> dict[str, dict[str, Any]]:
    """conf/model/<name>.yaml -> {backbone, image_size, ...}, in name order."""
    from omegaconf import OmegaConf

    return {
        p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in sorted((conf / "model").glob("*.yaml"))
    }


def tier_configs(conf: Path = CONF_DIR) -> dict[str, float]:
    """The GPU tiers' memory_gb, smallest first (cpu and auto have none)."""
    from omegaconf import OmegaConf

    tiers = {p.stem: OmegaConf.load(p).get("memory_gb") for p in (conf / "gpu").glob("*.yaml")}
    return dict(sorted(((n, float(gb)) for n, gb in tiers.items() if gb), key=lambda t: t[1]))


def gpu_settings(conf: Path = CONF_DIR) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(conf / "train.yaml").gpu)


def budget(memory_gb: float, settings: Mapping[str, Any]) -> recipes.MemoryBudget:
    """A tier's budget from the `gpu:` settings (conf/train.yaml)."""
    return recipes.memory_budget(memory_gb, settings["usable_fraction"], settings["cuda_overhead_gb"])


# ---------------------------------------------------------------------------------------------
# The tier tables of docs/recipes.md


TABLE_MODELS = ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "lite0")


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f}" if n >= 10e6 else f"{n / 1e6:.1f}"


def tables(rows: Mapping[Key, Row] | None = None, conf: Path = CONF_DIR) -> str:
    """The Markdown of docs/recipes.md's "GPU memory tiers" tables: the measured rows, then each tier's
    micro-batch capacity at each model's configured image size in bf16."""
    rows = read() if rows is None else rows
    models = {n: c for n, c in model_configs(conf).items() if n in TABLE_MODELS}
    settings, tiers = gpu_settings(conf), tier_configs(conf)
    out = [
        "Measured (`src/effnet/memory.csv`) at the input size of timm's pretrained weights, channels_last; "
        "MB = 10^6 bytes.",
        "Activations are saved bytes per image; with checkpointing they include the largest recomputed segment.",
        "",
        "| model | timm backbone | measured at (px) | params (M) | weights + grads + AdamW (MB) "
        "| activations / image fp32 (MB) | bf16 | bf16 + checkpointing |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, c in models.items():
        b = c["backbone"]
        plain, half, half_ck = (
            rows[(b, p, ck)] for p, ck in (("fp32", False), ("bf16", False), ("bf16", True))
        )
        fixed = plain.weight_bytes + plain.grad_bytes + plain.adamw_bytes
        out.append(
            f"| {name} | `{b}` | {plain.image_size} | {plain.params / 1e6:.1f} | {_mb(fixed)} "
            f"| {_mb(plain.per_image)} | {_mb(half.per_image)} | {_mb(half_ck.per_image)} |"
        )
    out += [
        "",
        f"Micro-batch capacity at each model's `image_size`, bf16-mixed: without / with gradient checkpointing "
        f"(usable fraction {settings['usable_fraction']}, CUDA overhead {settings['cuda_overhead_gb']} GB; "
        f"the plan switches checkpointing on below {settings['min_micro_batch']}).",
        "",
        "| model | px | " + " | ".join(f"`{t}`" for t in tiers) + " |",
        "|---|---|" + "---|" * len(tiers),
    ]
    for name, c in models.items():
        b, size = c["backbone"], int(c["image_size"])
        cells = []
        for gb in tiers.values():
            without, with_ck = (
                recipes.micro_batch_capacity(rows[(b, "bf16", ck)].cost(), budget(gb, settings), size)
                for ck in (False, True)
            )
            cells.append(f"{without} / {with_ck}")
        out.append(f"| {name} | {size} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def page_tables(page: Path = TABLES_PAGE) -> str:
    """The tables as the page has them now (between the markers)."""
    text = page.read_text()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    return text[start:end].strip("\n") + "\n"


def write_tables(page: Path = TABLES_PAGE, rows: Mapping[Key, Row] | None = None) -> bool:
    """Put `tables()` between the page's markers; True when that changed the page."""
    text = page.read_text()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    new = text[:start] + "\n" + tables(rows) + text[end:]
    if new != text:
        page.write_text(new)
    return new != text


# ---------------------------------------------------------------------------------------------
# On a GPU: the prediction against torch.cuda.max_memory_allocated


def gpu_peak(
    backbone: str,
    image_size: int,
    micro_batch: int,
    *,
    precision: str = "bf16",
    checkpointing: bool = False,
    cap_bytes: int | None = None,
) -> dict[str, Any]:
    """Two training steps of effnet's network on CUDA, as a run trains it (channels_last,
    autocast, timm's AdamW, gradients kept as gradient accumulation keeps them), and the second
    step's peak. cap_bytes: cap the allocator at that many bytes
    (torch.cuda.set_per_process_memory_fraction), as if the card had that much; `fits` says
    whether the step ran under it."""
    import torch
    import torch.nn.functional as F
    from timm.optim import create_optimizer_v2

    from effnet.training.model import build

    device = torch.device("cuda")
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total) if cap_bytes else 1.0)
    net = build(backbone, tuple(str(i) for i in range(CLASSES)), image_size, 0.2, (), 0.2)
    net = net.to(device, memory_format=torch.channels_last).train()
    net.backbone.set_grad_checkpointing(checkpointing)
    optimizer = create_optimizer_v2(net, opt="adamw", lr=1e-3, weight_decay=0.01)
    images = torch.randint(0, 256, (micro_batch, 3, image_size, image_size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, CLASSES, (micro_batch,), device=device)
    fits, error = True, ""
    try:
        for step in range(2):
            if step == 1:  # AdamW's state and the gradients exist from here on
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            x = ((images.float() - 127.5) / 64).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = F.cross_entropy(net(x), labels, label_smoothing=0.1)
            loss.backward()
            if step == 0:
                optimizer.step()  # no zero_grad: the next micro-batch accumulates into the gradients
        torch.cuda.synchronize()
    except torch.cuda.OutOfMemoryError as exc:
        fits, error = False, str(exc).split("\n")[0][:160]
    allocated, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    free, total = torch.cuda.mem_get_info()
    outside = (total - free) - torch.cuda.memory_reserved()  # the CUDA context and library kernels
    del net, optimizer, images, labels
    torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.empty_cache()
    return {
        "fits": fits,
        "error": error,
        "max_allocated": allocated,
        "max_reserved": reserved,
        "outside_allocator": outside,
        "device": torch.cuda.get_device_name(device),
    }


def gpu_check(
    models: Sequence[str] = ("b0", "lite0", "b4"),
    tiers: Sequence[str] = ("8gb", "24gb"),
    checkpointing: Sequence[bool | None] = (None,),
    conf: Path = CONF_DIR,
    run: Callable[..., dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """For each model, tier and checkpointing choice (None: as the plan decides), the tier's
    micro-batch capacity in bf16-mixed (the largest micro-batch a plan on that tier picks) and its
    predicted peak, next to the peak `run` measures (gpu_peak; None only predicts, no GPU needed)."""
    rows, settings, tier_gb, configs = read(), gpu_settings(conf), tier_configs(conf), model_configs(conf)
    minimum = int(settings["min_micro_batch"])
    results = []
    for name in models:
        backbone, size = configs[name]["backbone"], int(configs[name]["image_size"])
        found = costs(backbone, "bf16-mixed", rows)
        if found is None:
            raise KeyError(f"{backbone}: no row in {CSV_PATH}")
        for tier in tiers:
            tier_budget = budget(tier_gb[tier], settings)
            for choice in checkpointing:
                plain = recipes.micro_batch_capacity(found[False], tier_budget, size)
                use = plain < minimum if choice is None else choice
                capacity = recipes.micro_batch_capacity(found[use], tier_budget, size)
                plan = recipes.plan_batches(
                    max(1, capacity),
                    1,
                    costs=found,
                    budget=tier_budget,
                    image_size=size,
                    grad_checkpointing=use,
                )
                terms = dict(plan.peak)
                predicted = sum(terms.values()) - terms["CUDA context"]
                result = {
                    "model": name,
                    "tier": tier,
                    "image_size": size,
                    "capacity": capacity,
                    "micro_batch": plan.micro_batch,
                    "checkpointing": use,
                    "predicted_allocated": predicted,
                }
                if run is not None:
                    measured = run(
                        backbone, size, plan.micro_batch, checkpointing=use, cap_bytes=tier_budget.tier_bytes
                    )
                    result |= measured
                    result["ratio"] = round(measured["max_allocated"] / predicted, 3)
                results.append(result)
    return results


def format_check(results: Sequence[Mapping[str, Any]]) -> str:
    keys = ["model", "tier", "image_size", "micro_batch", "checkpointing", "predicted_allocated"]
    keys += [
        k
        for k in ("max_allocated", "ratio", "max_reserved", "outside_allocator", "fits", "error")
        if results and k in results[0]
    ]
    lines = ["\t".join(keys)]
    for r in results:
        cells = [
            f"{r[k] / 1e9:.3f} GB"
            if k in ("predicted_allocated", "max_allocated", "max_reserved", "outside_allocator")
            else str(r[k])
            for k in keys
        ]
        lines.append("\t".join(cells))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m effnet.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="conf/model/ names, comma-separated (default: all)")
    parser.add_argument("--out", type=Path, default=CSV_PATH, help="the CSV to write (default: %(default)s)")
    parser.add_argument("--tables", action="store_true", help="print docs/recipes.md's tier tables and exit")
    parser.add_argument(
        "--write-tables", action="store_true", help="write the tier tables into docs/recipes.md and exit"
    )
    parser.add_argument(
        "--gpu-check", action="store_true", help="measure peak CUDA memory against the prediction"
    )
    parser.add_argument("--dry", action="store_true", help="with --gpu-check: predictions only, no CUDA")
    args = parser.parse_args(argv)
    if args.tables:
        sys.stdout.write(tables())
        return 0
    if args.write_tables:
        changed = write_tables()
        print(
            f"{TABLES_PAGE}: tier tables {'rewritten' if changed else 'already up to date'}", file=sys.stderr
        )
        return 0
    if args.gpu_check:
        models = args.models.split(",") if args.models else ("b0", "lite0", "b4")
        results = gpu_check(models, checkpointing=(None, True), run=None if args.dry else gpu_peak)
        print(format_check(results))
        return 0
    configs = model_configs()
    names = args.models.split(",") if args.models else list(configs)
    unknown = [n for n in names if n not in configs]
    if unknown:
        parser.error(f"not in {CONF_DIR / 'model'}: {', '.join(unknown)}")
    kept = read(args.out) if args.models and args.out.exists() else {}
    measured = {}
    for name in names:
        backbone = configs[name]["backbone"]
        print(f"measuring {name} ({backbone}) ...", file=sys.stderr, flush=True)
        for row in measure_backbone(backbone, model=name):
            measured[(row.backbone, row.precision, row.checkpointing)] = row
    merged = {**{k: r for k, r in kept.items() if k[0] not in {m[0] for m in measured}}, **measured}
    order = {n: i for i, n in enumerate(configs)}
    ordered = sorted(
        merged.values(), key=lambda r: (order.get(r.model, math.inf), r.precision != "fp32", r.checkpointing)
    )
    command = "python -m effnet.memory" + (f" --models {args.models}" if args.models else "")
    write(ordered, args.out, provenance(command))
    print(f"wrote {len(ordered)} rows to {args.out}", file=sys.stderr)
    if args.out == CSV_PATH and TABLES_PAGE.is_file():  # the tables read this CSV
        write_tables()
        print(f"wrote the tier tables into {TABLES_PAGE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
