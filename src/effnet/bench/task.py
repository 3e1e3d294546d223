"""python bench.py's Hydra task: validate, run every measurement in turn, write bench.json, print.

The plan is resolved exactly as train.py resolves it, on the whole folder; the measurements
(effnet.bench.measure) then run on a seeded subset of `bench.images` training images, one after
another in this process: the ceiling once, then `bench.rounds` rounds of the loader and end to end,
each back to back with its reference (bench.compare) in alternating order (effnet.bench.rounds),
then the extra thread counts once. Meanwhile effnet.bench.machine notes the load and the memory, and
effnet.bench.report names the bottleneck and prints the table. Speeds are per process: a DDP plan
is measured on one device with its per-device batch.

Nothing here imports torch at import time: bench.py imports this module before Hydra has parsed
the command line, and --help and a bad value must answer at once.
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from effnet.bench import measure, report
from effnet.bench import rounds as bench_rounds
from effnet.bench.machine import MemoryWatch, cpu_name, load_average
from effnet.cli.argv import command_words
from effnet.errors import exit_with, one_line

log = logging.getLogger("effnet")


def bench_task(cfg: DictConfig) -> None:
    """The Hydra task behind bench.py: one line and exit 2 for a bad value, as train.py."""
    from effnet.cli.app import VALIDATED
    from effnet.cli.validate import validate_command

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        if out_dir.absolute() not in VALIDATED:  # compose() users: no Hydra callback checked it
            validate_command("bench", cfg)
        bench(cfg, out_dir)
    except Exception as exc:
        message = one_line(exc)
        if message is None:
            raise
        exit_with(message)


def compared(cfg: DictConfig) -> list[str]:
    value = cfg.bench.compare
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def bench(cfg: DictConfig, out_dir: Path) -> dict:
    """Measure, print the table, write bench.json; returns what bench.json holds."""
    import timm
    import torch

    from effnet import plan as run_plan
    from effnet.files import write_json
    from effnet.training.train import quiet_libraries

    quiet_libraries()
    started, load_start = time.perf_counter(), load_average()
    out_dir.mkdir(parents=True, exist_ok=True)
    plan, split, scanned = run_plan.resolve(cfg)  # the plan train.py would make, on the whole folder
    bench = cfg.bench
    subset = measure.bench_split(split, int(bench.images), int(bench.val_images), plan.seed)
    cuda = plan.accelerator == "cuda"
    torch.set_num_threads(plan.loading.threads)
    log.info(
        "bench: %s @ %d px, %d of %d training images, micro-batch %d, %s, %d worker(s), %d thread(s), data.cache=%s",
        plan.network.backbone,
        plan.network.image_size,
        len(subset.train),
        len(split.train),
        plan.batches.micro_batch,
        plan.precision,
        plan.loading.workers,
        plan.loading.threads,
        plan.loading.cache,
    )
    epochs, rounds = int(bench.epochs), int(bench.rounds)
    subjects = compared(cfg)
    result: dict[str, Any] = {}
    with MemoryWatch(cuda) as memory:
        result["ceiling"] = measure.ceiling(plan, int(bench.warmup_steps), int(bench.ceiling_steps))
    result["ceiling"].update(memory=memory.as_dict(), load_avg=load_average())

    def round_dir(index: int) -> Path:
        return out_dir / ("train" if index == 0 else f"train-round-{index + 1}")

    # each round: effnet and its reference back to back, in alternating order (bench.rounds)
    loaders: list[tuple[str, bench_rounds.Measure]] = [
        ("loader", lambda i: measure.effnet_loader(plan, subset, epochs, cuda))
    ]
    if "timm" in subjects:
        loaders.append(("timm_loader", lambda i: measure.timm_loader(plan, subset, epochs)))
    runs: list[tuple[str, bench_rounds.Measure]] = [
        ("end_to_end", lambda i: measure.end_to_end(plan, subset, scanned, round_dir(i), epochs, None, cuda))
    ]
    if "plain" in subjects:
        runs.append(("plain_loop", lambda i: measure.plain_loop(plan, subset, epochs)))
    measured, ran = bench_rounds.run([loaders, runs], rounds, load_average)
    for name, per_round in measured.items():
        result[name] = bench_rounds.summary(per_round)
    result["end_to_end_threads"] = {}
    for t in bench.threads:
        run_dir = out_dir / f"train-threads-{t}"
        result["end_to_end_threads"][str(t)] = {
            **measure.end_to_end(plan, subset, scanned, run_dir, epochs, int(t), cuda),
            "load_avg": load_average(),
        }
    result["ratios"] = report.ratios(result)  # between the medians
    result["ratios_by_round"] = [report.ratios(bench_rounds.one_round(result, i)) for i in range(rounds)]
    target = Path(str(bench.out)) if bench.out else out_dir / "bench.json"
    result = {
        "command": " ".join([*command_words(sys.argv[0]), *sys.argv[1:]]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_name(),
            "cores": run_plan.usable_cores(),
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "load_avg_start": load_start,
            "load_avg_end": load_average(),
            "torch": torch.__version__,
            "timm": timm.__version__,
        },
        "plan": {**plan.summary(), "accelerator": plan.accelerator},
        "images": len(subset.train),
        "val_images": len(subset.val),
        "epochs": epochs,
        "rounds": rounds,
        "order": ran,
        **result,
        "timm_loader": result.get("timm_loader"),
        "plain_loop": result.get("plain_loop"),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "bench_json": str(target),
    }
    result["bottleneck"] = report.bottleneck(result)
    write_json(target, result)
    report.print_table(result)
    return result
