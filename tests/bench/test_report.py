"""effnet.bench.report: the ratios, the bottleneck line and the table's rows, from a result alone."""

from effnet.bench.report import bottleneck, ratios, table_rows

MEMORY = {
    "main_rss_mb": 900.0,
    "workers_pss_mb": 0.0,
    "workers_private_mb": 0.0,
    "gpu_max_allocated_mb": None,
    "gpu_max_reserved_mb": None,
}


def result(data_wait: float, end_to_end: float) -> dict:
    """What task.bench has gathered when it asks for the ratios, the bottleneck and the table."""
    measured = {
        "ceiling": {"images_per_sec": 100.0, "step_s": 0.16},
        "loader": {
            "workers": 1,
            "cache": "ram",
            "cold_images_per_sec": 40.0,
            "cached_images_per_sec": 80.0,
            "cold_per_worker": 40.0,
            "cached_per_worker": 80.0,
        },
        "end_to_end": {
            "threads": 1,
            "cold_images_per_sec": end_to_end / 2,
            "cached_images_per_sec": end_to_end,
            "cold_data_wait": data_wait,
            "cached_data_wait": data_wait,
            "memory": MEMORY,
        },
        "end_to_end_threads": {},
        "plan": {"micro_batch_size": 16, "precision": "32-true", "channels_last": False, "threads": 1},
        "machine": {"load_avg_start": 1.0},
    }
    measured["ratios"] = ratios(measured)
    return measured


def test_ratios_are_over_the_steady_rate_and_none_without_a_comparison():
    assert ratios(result(0.0, 95.0)) == {
        "end_to_end_over_ceiling": 0.95,
        "loader_cold_over_timm": None,
        "loader_cached_over_timm": None,
        "end_to_end_over_plain": None,
    }


def test_the_bottleneck_names_the_loader_or_the_step():
    assert bottleneck(result(0.5, 50.0)).startswith("the loader: 50% of each step waits for data")
    assert bottleneck(result(0.0, 95.0)) == "the training step (100 img/s alone)"
    assert bottleneck(result(0.2, 70.0)).startswith("both: 20% of each step waits for data")


def test_the_table_has_a_row_per_measurement_and_no_comparison_not_asked_for():
    names = [name for name, _, _ in table_rows(result(0.0, 95.0))]
    assert names == [
        "ceiling (training step alone)",
        "loader, epoch 1 (cold)",
        "loader, epochs 2+ (cached)",
        "end to end, epoch 1 (cold)",
        "end to end, epochs 2+",
        "peak memory (end to end)",
        "end to end / ceiling",
    ]
