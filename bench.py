"""Measure how fast a run would train on this machine, and what limits it.

python bench.py data.root=~/photos bench.compare=timm
python bench.py --help
"""

from pathlib import Path

from effnet.bench.task import bench_task
from effnet.cli.app import main

if __name__ == "__main__":
    main(config_dir=Path(__file__).resolve().parent / "conf", config_name="bench", task=bench_task)
