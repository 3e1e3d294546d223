"""How a start grows with the data: `train.py ... dry_run=true` against timm's create_dataset.

    python scripts/start_scale.py --images 1000 10000 100000 --classes 100

For each size, writes that many small JPEGs into class folders (once, under --root), then times,
each in a fresh process: effnet's dry run cold (no scan cache: every file opened once), warm (the
scan cache from the cold run: every file stat'ed, none opened), and timm's
`create_dataset("", root=...)` (import timm included, as a user's script pays it). The page cache
is warm in all three (the folder was just written or read), so "cold" means effnet's own cache.
Prints one Markdown row per size for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TIMM = "import sys, timm.data; print(len(timm.data.create_dataset('', root=sys.argv[1])))"


def _write_class(job: tuple[Path, int, int]) -> int:
    folder, count, seed = job
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=85)
    return count


def make_folder(root: Path, images: int, classes: int) -> Path:
    """root/<images>/c<k>/<i>.jpg, written once and reused."""
    folder = root / str(images)
    done = folder / ".complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    per = [images // classes + (k < images % classes) for k in range(classes)]
    jobs = [(folder / f"c{k:03d}", n, k) for k, n in enumerate(per)]
    with ProcessPoolExecutor() as pool:
        written = sum(pool.map(_write_class, jobs))
    assert written == images
    done.touch()
    return folder


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return elapsed


def measure(folder: Path, work: Path) -> dict[str, float]:
    dry = [
        sys.executable,
        str(REPO / "train.py"),
        f"data.root={folder}",
        "dry_run=true",
        "trainer.accelerator=cpu",
        "model.backbone=efficientnet_b0",
    ]
    shutil.rmtree(work / "outputs" / "cache", ignore_errors=True)  # the scan cache lives in the cwd
    return {
        "cold": timed(dry, work),
        "warm": timed(dry, work),
        "timm": timed([sys.executable, "-c", TIMM, str(folder)], work),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--root", type=Path, default=Path("/tmp/effnet-scale"))
    args = parser.parse_args()
    work = args.root / "work"
    work.mkdir(parents=True, exist_ok=True)
    print(f"# {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, {args.classes} classes, 32x32 JPEGs")
    print("| images | dry run, cold (s) | dry run, warm (s) | timm create_dataset (s) | warm / timm |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.images:
        folder = make_folder(args.root, n, args.classes)
        t = measure(folder, work)
        print(
            f"| {n:,} | {t['cold']:.1f} | {t['warm']:.1f} | {t['timm']:.1f} | {t['warm'] / t['timm']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
