"""The bench's report: the ratios between measurements, the bottleneck line and the table.

Pure functions of the result dict bench.json holds (rich is imported only to print), so the
words a user reads can be checked without running a measurement.
"""

from __future__ import annotations


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _best(result: dict | None) -> float | None:
    """The steady rate: the cached epochs' median, or the only epoch there is."""
    if not result:
        return None
    return result.get("cached_images_per_sec") or result.get("cold_images_per_sec")


def ratios(result: dict) -> dict[str, float | None]:
    """effnet's rates over the ceiling's, timm's and the plain loop's (None where one is missing)."""
    e2e = _best(result["end_to_end"])
    timm = result.get("timm_loader") or {}
    return {
        "end_to_end_over_ceiling": _ratio(e2e, result["ceiling"]["images_per_sec"]),
        "loader_cold_over_timm": _ratio(
            result["loader"]["cold_images_per_sec"], timm.get("cold_images_per_sec")
        ),
        "loader_cached_over_timm": _ratio(
            result["loader"]["cached_images_per_sec"], timm.get("cached_images_per_sec")
        ),
        "end_to_end_over_plain": _ratio(e2e, _best(result.get("plain_loop"))),
    }


def bottleneck(result: dict) -> str:
    """One line naming what limits the end-to-end rate."""
    ceiling_rate, loader, e2e = result["ceiling"]["images_per_sec"], result["loader"], result["end_to_end"]
    wait = e2e["cached_data_wait"] if e2e["cached_data_wait"] is not None else e2e["cold_data_wait"]
    ratio = result["ratios"]["end_to_end_over_ceiling"] or 0
    if wait >= 0.3:
        return (
            f"the loader: {wait:.0%} of each step waits for data; alone it gives {_best(loader):g} img/s with "
            f"{loader['workers']} worker(s) against the step's {ceiling_rate:g} img/s "
            "(more data.num_workers, data.cache=ram|disk)"
        )
    if ratio >= 0.9 or wait < 0.1:
        gap = ""
        if ratio < 0.9:
            gap = (
                f"; end to end is {ratio:.0%} of the ceiling with only {wait:.0%} data wait, so the gap is "
                "per-step work outside the step or other processes on this machine "
                f"(load avg {result['machine']['load_avg_start']})"
            )
        return f"the training step ({ceiling_rate:g} img/s alone){gap}"
    return (
        f"both: {wait:.0%} of each step waits for data and end to end is {ratio:.0%} of the ceiling; "
        f"the loader alone gives {_best(loader):g} img/s with {loader['workers']} worker(s), and its workers "
        f"share the machine with the training threads ({result['plan']['threads']})"
    )


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def shown_rate(measured: dict, key: str) -> str:
    """A block's rate: the median over rounds, with the rounds' min–max when there are several."""
    value, spread = measured.get(key), (measured.get("spread") or {}).get(key)
    if value is None or not spread or len(measured.get("rounds", [])) < 2:
        return _rate(value)
    return f"{_rate(value)} ({_rate(spread[0])}–{_rate(spread[1])})"


def table_rows(result: dict) -> list[tuple[str, str, str]]:
    """(measurement, images/s, detail) for the table; a block measured in rounds shows its median
    and the rounds' min-max."""
    rate = _rate

    plan, loader = result["plan"], result["loader"]
    table = [
        (
            "ceiling (training step alone)",
            rate(result["ceiling"]["images_per_sec"]),
            f"{result['ceiling']['step_s'] * 1000:.0f} ms/step, micro-batch {plan['micro_batch_size']}, "
            f"{plan['precision']}" + (", channels_last" if plan["channels_last"] else ""),
        ),
    ]

    def epochs(
        name: str,
        measured: dict,
        cold_detail: str,
        cached_detail: str,
        cold="epoch 1 (cold)",
        cached="epochs 2+",
    ):
        """The cold row, and the cached row when more than one epoch was measured."""
        out = [(f"{name}, {cold}", shown_rate(measured, "cold_images_per_sec"), cold_detail)]
        if measured["cached_images_per_sec"] is not None:
            out.append((f"{name}, {cached}", shown_rate(measured, "cached_images_per_sec"), cached_detail))
        return out

    table += epochs(
        "loader",
        loader,
        f"{loader['workers']} worker(s), {rate(loader['cold_per_worker'])} per worker; data.cache={loader['cache']}",
        f"{rate(loader['cached_per_worker'])} per worker",
        cached="epochs 2+ ("
        + ("cached" if loader["cache"] != "none" else "decoded again: data.cache=none")
        + ")",
    )
    timm = result.get("timm_loader")
    if timm:
        ratios = result["ratios"]
        table += epochs(
            "timm create_loader",
            timm,
            f"effnet / timm: {ratios['loader_cold_over_timm']}x",
            f"effnet / timm: {ratios['loader_cached_over_timm']}x",
            cold="epoch 1",
        )
    for name, e2e in [("end to end", result["end_to_end"])] + [
        (f"end to end, {t} thread(s)", r) for t, r in result.get("end_to_end_threads", {}).items()
    ]:
        table += epochs(
            name,
            e2e,
            f"{e2e['threads']} thread(s), data wait {e2e['cold_data_wait']:.0%}",
            f"data wait {e2e['cached_data_wait']:.0%}" if e2e["cached_data_wait"] is not None else "",
        )
    plain = result.get("plain_loop")
    if plain:
        table.append(
            (
                "plain timm+torch loop",
                shown_rate(
                    plain,
                    "cached_images_per_sec" if plain.get("cached_images_per_sec") else "cold_images_per_sec",
                ),
                f"effnet / plain: {result['ratios']['end_to_end_over_plain']}x",
            )
        )
    memory = result["end_to_end"]["memory"]
    gpu = ""
    if memory["gpu_max_allocated_mb"] is not None:
        gpu = f"GPU max allocated {memory['gpu_max_allocated_mb']:,.0f} MB, reserved {memory['gpu_max_reserved_mb']:,.0f} MB; "
    table.append(
        (
            "peak memory (end to end)",
            "",
            gpu + f"RSS main {memory['main_rss_mb']:,.0f} MB; workers Pss {memory['workers_pss_mb']:,.0f} MB "
            f"({memory['workers_private_mb']:,.0f} MB private)",
        )
    )
    table.append(("end to end / ceiling", f"{result['ratios']['end_to_end_over_ceiling']}", ""))
    return table


def _loads(measured: dict | None) -> str | None:
    """The load average after a block: one value, or each round's (" / " between them)."""
    if not measured:
        return None
    loads = measured.get("load_avgs") or [measured.get("load_avg")]
    if all(v is None for v in loads):
        return None
    return " / ".join("-" if v is None else f"{v:g}" for v in loads)


def load_column(result: dict) -> dict[str, str | None]:
    """The load average when each measurement ended (each round's, for a block measured in
    rounds), by the first word of its row."""
    return {
        "ceiling": _loads(result["ceiling"]),
        "loader": _loads(result["loader"]),
        "timm": _loads(result.get("timm_loader")),
        "end": _loads(result["end_to_end"]),
        "plain": _loads(result.get("plain_loop")),
    }


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    machine = result["machine"]
    title = (
        f"effnet bench: {result['plan']['model']} @ {result['plan']['image_size']} px, "
        f"{result['images']} training images, {machine['device']}, load avg {machine['load_avg_start']}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("measurement")
    table.add_column("images/s", justify="right")
    table.add_column("detail")
    table.add_column("load avg", justify="right")
    loads = load_column(result)
    threads = {f"end to end, {t} thread(s)": _loads(r) for t, r in result["end_to_end_threads"].items()}
    for name, rate, detail in table_rows(result):
        load = next((v for k, v in threads.items() if name.startswith(k)), None)
        load = load if load is not None else loads.get(name.split()[0].rstrip(","))
        shown = load is not None and rate and "/" not in name
        table.add_row(name, rate, detail, load if shown else "")
    console = Console(width=max(Console().width, 120))
    console.print(table)
    rounds = result.get("rounds", 1)
    if rounds > 1:
        console.print(f"rounds: median (min–max) of {rounds}, order alternating; load avg: each round's")
    console.print(f"bottleneck: {result['bottleneck']}")
    console.print(f"bench.json: {result['bench_json']}")
