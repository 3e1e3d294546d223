"""effnet.bench.rounds: effnet and its reference back to back in alternating order, and the medians.

Small real measurement functions (they record when they ran and return figures), no torch: the
order, the medians, the ratios and the load column come from the rounds alone.
"""

import itertools

from effnet.bench.report import bottleneck, load_column, ratios, table_rows
from effnet.bench.rounds import median, one_round, order, run, spread, summary

MEMORY = {
    "main_rss_mb": 900.0,
    "workers_pss_mb": 0.0,
    "workers_private_mb": 0.0,
    "gpu_max_allocated_mb": None,
    "gpu_max_reserved_mb": None,
}


def loader(cold: float, cached: float, **extra) -> dict:
    """A loader block's figures, as measure.effnet_loader / timm_loader return them."""
    return {
        "workers": 1,
        "epochs_images_per_sec": [cold, cached],
        "cold_images_per_sec": cold,
        "cached_images_per_sec": cached,
        "cold_per_worker": cold,
        "cached_per_worker": cached,
        **extra,
    }


def end_to_end(cold: float, cached: float, wait: float, main_rss: float) -> dict:
    return {
        "threads": 1,
        "epochs_images_per_sec": [cold, cached],
        "epochs_data_wait": [wait, wait],
        "cold_images_per_sec": cold,
        "cached_images_per_sec": cached,
        "cold_data_wait": wait,
        "cached_data_wait": wait,
        "run_dir": "train",
        "memory": {**MEMORY, "main_rss_mb": main_rss},
    }


# Each block's figures in rounds 1, 2, 3: the medians are the middle ones, never the first or the last.
FIGURES = {
    "loader": [loader(40, 80, cache="ram"), loader(30, 60, cache="ram"), loader(50, 100, cache="ram")],
    "timm_loader": [loader(20, 40), loader(25, 50), loader(10, 20)],
    "end_to_end": [end_to_end(8, 9, 0.0, 900), end_to_end(9, 10, 0.2, 950), end_to_end(7, 8, 0.1, 920)],
    "plain_loop": [loader(9, 10), loader(8, 9), loader(10, 12)],
}


def measured_in_rounds(rounds: int = 3):
    """run() over four recording measurement functions, the load average counting up 1, 2, 3..."""
    calls: list[tuple[str, int]] = []

    def block(name: str):
        def measure(index: int) -> dict:
            calls.append((name, index))
            return FIGURES[name][index]

        return measure

    loads = itertools.count(1)
    pairs = [
        [("loader", block("loader")), ("timm_loader", block("timm_loader"))],
        [("end_to_end", block("end_to_end")), ("plain_loop", block("plain_loop"))],
    ]
    measured, ran = run(pairs, rounds, lambda: float(next(loads)))
    return measured, ran, calls


def test_each_round_measures_effnet_and_its_reference_back_to_back_in_alternating_order():
    assert order(["loader", "timm_loader"], 0) == ["loader", "timm_loader"]
    assert order(["loader", "timm_loader"], 1) == ["timm_loader", "loader"]
    assert order(["loader"], 1) == ["loader"], "without a reference, effnet alone"
    measured, ran, calls = measured_in_rounds()
    assert ran == [
        ["loader", "timm_loader", "end_to_end", "plain_loop"],
        ["timm_loader", "loader", "plain_loop", "end_to_end"],
        ["loader", "timm_loader", "end_to_end", "plain_loop"],
    ]
    assert calls == [(name, i) for i, names in enumerate(ran) for name in names], "a fresh call per round"
    assert [r["round"] for r in measured["plain_loop"]] == [1, 2, 3]


def test_the_load_average_is_noted_after_each_block_of_each_round():
    measured, ran, _ = measured_in_rounds()
    noted = {(r["round"], name): r["load_avg"] for name, rounds in measured.items() for r in rounds}
    in_order = [noted[(i + 1, name)] for i, names in enumerate(ran) for name in names]
    assert in_order == [float(n) for n in range(1, 13)], "one reading after every block, in the order run"
    block = summary(measured["timm_loader"])
    assert block["load_avgs"] == [2.0, 5.0, 10.0] and block["load_avg"] == 5.0


def test_a_block_reports_the_median_of_its_rounds_their_spread_and_every_round():
    assert median([3, None, 1, 2]) == 2 and median([None]) is None
    assert spread([3, None, 1]) == [1, 3] and spread([None]) is None
    measured, _, _ = measured_in_rounds()
    block = summary(measured["loader"])
    assert block["cold_images_per_sec"] == 40 and block["cached_images_per_sec"] == 80
    assert block["spread"] == {"cold_images_per_sec": [30, 50], "cached_images_per_sec": [60, 100]}
    assert block["epochs_images_per_sec"] == [40, 80] and block["cache"] == "ram"
    assert [r["cold_images_per_sec"] for r in block["rounds"]] == [40, 30, 50], "every round is kept"
    e2e = summary(measured["end_to_end"])
    assert e2e["cached_data_wait"] == 0.1 and e2e["memory"]["main_rss_mb"] == 950, "peak memory of any round"
    assert e2e["memory"]["gpu_max_allocated_mb"] is None
    one = summary(measured_in_rounds(rounds=1)[0]["loader"])
    assert one["cold_images_per_sec"] == 40 and one["spread"]["cold_images_per_sec"] == [40, 40]


def result_in_rounds() -> dict:
    """What task.bench has gathered when it asks for the ratios, the bottleneck and the table."""
    measured, _, _ = measured_in_rounds()
    result = {name: summary(rounds) for name, rounds in measured.items()}
    result.update(
        ceiling={"images_per_sec": 10.0, "step_s": 1.6, "load_avg": 0.5},
        end_to_end_threads={},
        plan={"micro_batch_size": 16, "precision": "32-true", "channels_last": False, "threads": 1},
        machine={"load_avg_start": 1.0},
        rounds=3,
    )
    result["ratios"] = ratios(result)
    return result


def test_the_ratios_and_the_bottleneck_are_taken_from_the_medians():
    result = result_in_rounds()
    assert result["ratios"] == {
        "end_to_end_over_ceiling": 0.9,  # median 9 / 10
        "loader_cold_over_timm": 2.0,  # 40 / 20
        "loader_cached_over_timm": 2.0,  # 80 / 40
        "end_to_end_over_plain": 0.9,  # 9 / 10
    }
    by_round = [ratios(one_round(result, i)) for i in range(3)]
    assert [r["loader_cold_over_timm"] for r in by_round] == [2.0, 1.2, 5.0]
    assert bottleneck(result) == "the training step (10 img/s alone)", (
        "median data wait 0.1, 90% of the ceiling"
    )


def test_the_table_shows_the_median_with_the_rounds_spread_and_each_rounds_load():
    result = result_in_rounds()
    rows = {name: rate for name, rate, _ in table_rows(result)}
    assert rows["loader, epoch 1 (cold)"] == "40.0 (30.0–50.0)"
    assert rows["timm create_loader, epochs 2+"] == "40.0 (20.0–50.0)"
    assert rows["plain timm+torch loop"] == "10.0 (9.0–12.0)"
    loads = load_column(result)
    assert loads["ceiling"] == "0.5"
    assert loads["loader"] == "1 / 6 / 9" and loads["timm"] == "2 / 5 / 10"
    assert loads["end"] == "3 / 8 / 11" and loads["plain"] == "4 / 7 / 12"
