"""bench.rounds: effnet's measurements and their references, back to back, in alternating order.

On a shared machine the load changes over minutes, so whichever of two measurements runs first
meets another machine than the second: an order effect. Each round measures every pair (effnet's
loader and timm's create_loader with bench.compare=timm; effnet end to end and the plain loop
with bench.compare=plain) back to back, round 1 effnet first, round 2 the reference first, and so
on. Every measurement of a round is a fresh one (a fresh loader and RAM store, a fresh run).
bench.json keeps every round's figures and the load average after each block; a block's figures
are the medians over its rounds, with their spread, and the ratios are taken between medians.

Pure Python, no torch: bench.py imports it before Hydra parses the command line, and the order
and the medians are checked without measuring anything.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence

log = logging.getLogger("effnet")

Measure = Callable[[int], dict]  # the round's index (0 first) -> that block's figures
Pair = Sequence[tuple[str, Measure]]  # effnet's block, then its reference (if compared)

# Figures that become their median over rounds; the rates also keep their spread.
RATES = ("cold_images_per_sec", "cached_images_per_sec")
MEDIANS = (
    *RATES,
    "cold_per_worker",
    "cached_per_worker",
    "cold_data_wait",
    "cached_data_wait",
    "store_setup_s",
    "load_avg",
)
PER_EPOCH = ("epochs_images_per_sec", "epochs_data_wait")  # lists: the median epoch by epoch


def order(names: Sequence[str], index: int) -> list[str]:
    """The order of one pair's blocks in round `index` (0 first): as given in even rounds
    (effnet first), reversed in odd ones (the reference first)."""
    return list(names) if index % 2 == 0 else list(reversed(names))


def run(
    pairs: Sequence[Pair], rounds: int, load: Callable[[], float | None]
) -> tuple[dict[str, list[dict]], list[list[str]]]:
    """Measure every pair `rounds` times, each pair's blocks back to back in `order`; `load()`
    after each block goes into its figures as load_avg. Returns each block's figures per round,
    and the blocks in the order they ran, per round."""
    measured: dict[str, list[dict]] = {name: [] for pair in pairs for name, _ in pair}
    ran: list[list[str]] = []
    for index in range(rounds):
        ran.append([])
        for pair in pairs:
            measures = dict(pair)
            for name in order([name for name, _ in pair], index):
                if rounds > 1:
                    log.info("bench: round %d/%d, %s", index + 1, rounds, name)
                measured[name].append({**measures[name](index), "round": index + 1, "load_avg": load()})
                ran[-1].append(name)
    return measured, ran


def _present(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def median(values: Sequence[float | None]) -> float | None:
    """The median of the values measured (None: not measured, e.g. a cached rate after one epoch)."""
    present = _present(values)
    return round(statistics.median(present), 4) if present else None


def spread(values: Sequence[float | None]) -> list[float] | None:
    """[min, max] of the values measured."""
    present = _present(values)
    return [min(present), max(present)] if present else None


def summary(rounds: list[dict]) -> dict:
    """One block over its rounds: round 1's settings (workers, cache, threads, run folder), the
    median of each figure, the rates' [min, max] (`spread`), the peak memory of any round, the load
    average after each round (`load_avgs`), and every round's own figures (`rounds`)."""
    first = rounds[0]
    block = {key: value for key, value in first.items() if key != "round"}
    for key in MEDIANS:
        if key in first:
            block[key] = median([r.get(key) for r in rounds])
    for key in PER_EPOCH:
        if key in first:
            block[key] = [median(epoch) for epoch in zip(*(r[key] for r in rounds), strict=True)]
    if "memory" in first:
        block["memory"] = {
            key: max(_present([r["memory"][key] for r in rounds]), default=None) for key in first["memory"]
        }
    block["spread"] = {key: spread([r.get(key) for r in rounds]) for key in RATES if key in first}
    block["load_avgs"] = [r.get("load_avg") for r in rounds]
    block["rounds"] = rounds
    return block


def one_round(result: dict, index: int) -> dict:
    """`result` with each block that has rounds replaced by its round `index`'s figures (for the
    ratios within one round)."""
    return {
        key: value["rounds"][index] if isinstance(value, dict) and "rounds" in value else value
        for key, value in result.items()
    }
