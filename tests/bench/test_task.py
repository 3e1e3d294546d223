"""bench.py as a user runs it: the demo with tiny settings, every measurement and comparison, in 2
rounds (effnet.bench.rounds' order and medians are tested alone in test_rounds.py)."""

import json

from tests.helpers import BENCH_TINY, one_error_line, run_script

TINY_BENCH = ["data=demo", *BENCH_TINY]
MEASUREMENT = {"images_per_sec", "step_s", "steps", "micro_batch", "memory", "load_avg"}
LOADER = {
    "load_avg",
    "workers",
    "epochs_images_per_sec",
    "cold_images_per_sec",
    "cached_images_per_sec",
    "cold_per_worker",
    "cached_per_worker",
}
END_TO_END = {
    "load_avg",
    "threads",
    "epochs_images_per_sec",
    "epochs_data_wait",
    "cold_images_per_sec",
    "cached_images_per_sec",
    "cold_data_wait",
    "cached_data_wait",
    "run_dir",
    "memory",
}
MEMORY = {
    "main_rss_mb",
    "workers_pss_mb",
    "workers_private_mb",
    "gpu_max_allocated_mb",
    "gpu_max_reserved_mb",
}


def test_bench_on_the_demo_measures_everything_and_writes_bench_json(tmp_path):
    out = tmp_path / "bench.json"
    args = [
        *TINY_BENCH,
        "bench.compare=[timm,plain]",
        "bench.threads=[1]",
        "bench.rounds=2",
        f"bench.out={out}",
    ]
    result = run_script("bench.py", args, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "effnet bench: mobilenetv3_small_100 @ 32 px, 16 training images" in result.stdout
    assert "bottleneck: " in result.stdout
    assert "rounds: median (min–max) of 2, order alternating" in result.stdout

    bench = json.loads(out.read_text())
    assert set(bench) >= {
        "command",
        "date",
        "machine",
        "plan",
        "images",
        "epochs",
        "ceiling",
        "loader",
        "timm_loader",
        "end_to_end",
        "end_to_end_threads",
        "plain_loop",
        "ratios",
        "ratios_by_round",
        "rounds",
        "order",
        "bottleneck",
        "wall_time_s",
    }
    assert set(bench["machine"]) >= {
        "cpu",
        "cores",
        "device",
        "load_avg_start",
        "load_avg_end",
        "torch",
        "timm",
    }
    assert bench["images"] == 16 and bench["plan"]["num_train_images"] == 392, (
        "the plan is the whole folder's"
    )
    assert set(bench["ceiling"]) >= MEASUREMENT and bench["ceiling"]["images_per_sec"] > 0
    assert set(bench["loader"]) >= LOADER | {"cache", "store_setup_s", "store_mb", "memory"}
    assert bench["loader"]["cache"] == "ram" and bench["loader"]["store_mb"] > 0
    assert len(bench["loader"]["epochs_images_per_sec"]) == 2 and bench["loader"]["cached_images_per_sec"] > 0
    assert set(bench["timm_loader"]) >= LOADER and bench["timm_loader"]["cold_images_per_sec"] > 0
    assert set(bench["end_to_end"]) >= END_TO_END
    assert len(bench["end_to_end"]["epochs_images_per_sec"]) == 2
    assert 0 <= bench["end_to_end"]["cold_data_wait"] <= 1
    assert set(bench["end_to_end_threads"]) == {"1"} and bench["end_to_end_threads"]["1"]["threads"] == 1
    assert bench["plain_loop"]["cold_images_per_sec"] > 0
    assert set(bench["end_to_end"]["memory"]) == MEMORY and bench["end_to_end"]["memory"]["main_rss_mb"] > 0
    assert all(
        bench["ratios"][k] > 0
        for k in (
            "end_to_end_over_ceiling",
            "loader_cold_over_timm",
            "loader_cached_over_timm",
            "end_to_end_over_plain",
        )
    )
    assert bench["rounds"] == 2 and bench["order"] == [
        ["loader", "timm_loader", "end_to_end", "plain_loop"],
        ["timm_loader", "loader", "plain_loop", "end_to_end"],
    ]
    for name in ("loader", "timm_loader", "end_to_end", "plain_loop"):
        block, rounds = bench[name], bench[name]["rounds"]
        assert [r["round"] for r in rounds] == [1, 2] and all(r["load_avg"] is not None for r in rounds)
        assert block["load_avgs"] == [r["load_avg"] for r in rounds]
        cold = sorted(r["cold_images_per_sec"] for r in rounds)
        assert block["spread"]["cold_images_per_sec"] == cold
        assert block["cold_images_per_sec"] == round(sum(cold) / 2, 4), "the median of 2 rounds"
    assert bench["ratios"]["loader_cold_over_timm"] == round(
        bench["loader"]["cold_images_per_sec"] / bench["timm_loader"]["cold_images_per_sec"], 3
    ), "the ratios are between the medians"
    assert len(bench["ratios_by_round"]) == 2
    assert [r["store_mb"] > 0 for r in bench["loader"]["rounds"]] == [True, True], "a fresh store each round"
    run_dirs = [tmp_path / r["run_dir"] for r in bench["end_to_end"]["rounds"]]
    assert [d.name for d in run_dirs] == ["train", "train-round-2"] and all(d.is_dir() for d in run_dirs)
    summary = json.loads((tmp_path / bench["end_to_end"]["run_dir"] / "summary.json").read_text())
    assert summary["num_train_images"] == 16 and summary["epochs"] == 2, (
        "end to end trained on the bench's images"
    )


def test_a_bad_bench_value_is_one_line_and_nothing_is_written(tmp_path):
    result = run_script("bench.py", [*TINY_BENCH, "bench.compare=tim"], cwd=tmp_path)
    assert result.returncode == 2
    assert one_error_line(result).startswith("bench.compare=tim: must be null, timm, plain or a list of them")
    assert not (tmp_path / "outputs" / "bench").exists()
    result = run_script("bench.py", ["data=demo", "data.cache=yes"], cwd=tmp_path)
    assert one_error_line(result) == "data.cache=yes: must be one of: none, ram, disk, auto"
