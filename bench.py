"""Measure how fast a run would train on this machine, and what limits it.

python bench.py data.root=~/photos bench.compare=timm
python bench.py --help
"""

from effnet.cli.commands import bench

if __name__ == "__main__":
    bench()
