"""Where a whole training run's wall time goes, by phase: start-up, training steps, waiting for data,
validation, checkpoints, figures. For comparing effnet's train.py with timm's train.py on the same
recipe (issue 20, item 1), record each under py-spy with --idle (waiting counts as wall time), then
summarise the two side by side:

    py-spy record --idle --rate 50 --format raw -o effnet.txt -- python train.py data.root=... epochs=3
    py-spy record --idle --rate 50 --format raw -o timm.txt -- python timm_train.py ... --epochs 3
    python scripts/profile_run.py effnet.txt timm.txt --rate 50

Only the main thread of the main process counts (loader workers are separate processes, and the
helper threads of the main one mostly wait): "waiting for data" is the time the step stood still for
the workers. A stack goes to the first phase whose frames it holds, in the
order of PHASES, so that validation's own data loading counts as validation.
"""

from __future__ import annotations

import argparse
import collections

# (phase, substrings of a frame) in priority order; effnet's (Lightning's) and timm train.py's names
PHASES = (
    ("checkpoint writes", ("save_checkpoint", "_save_checkpoint", "CheckpointSaver")),
    ("figures and metrics files", ("savefig", "dashboards.py", "plots.py", "write_results", "results.csv")),
    ("validation", ("evaluation_loop.py", "validate (", "validation_step")),
    ("waiting for data", ("_next_data", "dataloader.py", "fetchers.py", "loader.py")),
    ("training step", ("training_step", "backward", "optimizer_step", "train_one_epoch", "step (")),
    ("imports", ("_find_and_load", "<frozen importlib")),
)


def phases(raw: str) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    with open(raw) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            if not n.isdigit() or stack.startswith("Thread._bootstrap"):
                continue  # a helper thread (a queue feeder, a pin-memory thread) waits beside the run
            phase = next(
                (p for p, marks in PHASES if any(m in stack for m in marks)), "other (set-up, loops, exit)"
            )
            counts[phase] += int(n)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("raw", nargs="+", help="py-spy --format raw outputs, one per run")
    parser.add_argument("--rate", type=float, default=50, help="the samples a second py-spy recorded at")
    args = parser.parse_args()
    runs = {path: phases(path) for path in args.raw}
    names = [p for p, _ in PHASES] + ["other (set-up, loops, exit)"]
    print("phase".ljust(30) + "".join(f"{path[-24:]:>26}" for path in runs))
    for name in [*names, "total"]:
        cells = []
        for counts in runs.values():
            n = sum(counts.values()) if name == "total" else counts[name]
            share = 100 * n / max(1, sum(counts.values()))
            cells.append(f"{n / args.rate:9.1f} s {share:5.1f}%".rjust(26))
        print(name.ljust(30) + "".join(cells))


if __name__ == "__main__":
    main()
