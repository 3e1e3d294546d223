#!/usr/bin/env bash
# Fetch the wheels scripts/gpu-check.sh installs on a GPU machine whose image has torch, Lightning,
# timm and torchmetrics but neither Hydra nor wandb, and which reaches no package index. Run it
# where pip reaches PyPI, from the repository root; the call that runs gpu-check.sh carries .whl/:
#   bash scripts/gpu-wheels.sh [DEST]       DEST defaults to .whl (.gitignore ignores it)
# Versions are requirements.lock's; the platform is CPython 3.12 on x86-64 Linux, the GPU image's
# python3. antlr4-python3-runtime (Hydra's parser) exists on PyPI only as a source archive: it is
# built here into a pure-Python wheel. wandb comes with its dependencies; gpu-check.sh installs only
# those the machine lacks. About 28 MB: a device call carries at most 64 MiB with the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
py=${PYTHON:-.venv/bin/python}
target=(
    --only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64
)
mkdir -p "$dest"
# Hydra and OmegaConf alone: their one dependency missing there is antlr4, built below.
"$py" -m pip download -q "${target[@]}" --no-deps -c requirements.lock -d "$dest" hydra-core omegaconf
"$py" -m pip download -q "${target[@]}" -c requirements.lock -d "$dest" wandb
"$py" -m pip wheel -q --no-deps -c requirements.lock -w "$dest" antlr4-python3-runtime
ls "$dest"
du -sh "$dest"
