#!/usr/bin/env bash
# Everything effnet checks on a GPU, in one call of at most 8 minutes, into one file:
#   1. the wheels of .whl/ the machine lacks (Hydra, wandb: scripts/gpu-wheels.sh fetches them)
#   2. the `gpu` tests: bf16-mixed and channels_last training of the demo on one GPU, export of a
#      GPU-trained run, gpu=auto picking a tier, the memory model at B0, Lite0 and B4's 8gb micro-batch
#   3. the memory model: torch.cuda.max_memory_allocated against the prediction for B0, Lite0 and B4
#      at their 8gb and 24gb micro-batch capacity, checkpointing as the plan decides and forced on,
#      with the allocator capped at the tier's memory; also the memory outside the allocator (the
#      CUDA context: gpu.cuda_overhead_gb) and the reserved peak (fragmentation: gpu.usable_fraction)
#   4. bench.py for B0 at 224 px in bf16-mixed on the demo images
# The report is $OUT/gpu-check.txt (outputs/gpu-check/gpu-check.txt where OUT is not set); the exit
# status is 0 only when every step passed.
#
#   bash scripts/gpu-check.sh          on a machine with a GPU
#   bash scripts/gpu-check.sh --dry    here, on the CPU: the same steps, shortened; CUDA parts skip
#
# PYTHON picks the interpreter (default: python3, which holds torch on the GPU image).
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0
[[ "${1:-}" == "--dry" ]] && dry=1
py=${PYTHON:-python3}
out=${OUT:-outputs/gpu-check}
mkdir -p "$out"
report="$out/gpu-check.txt"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# 8 minutes for the whole call; 20 s of it are kept for starting and returning.
deadline=$(( $(date +%s) + 460 ))
failed=()
summary=()

log() { echo "$*" | tee -a "$report"; }

# step NAME SECONDS COMMAND...: run it with its output in the report, no longer than SECONDS nor
# past the deadline; a failure is recorded and the next step still runs.
step() {
    local name=$1 limit=$2 left started rc
    shift 2
    left=$(( deadline - $(date +%s) ))
    (( limit > left )) && limit=$left
    if (( limit < 10 )); then
        summary+=("$name: not run (out of time)")
        failed+=("$name")
        return
    fi
    log ""
    log "== $name (at most ${limit} s): $*"
    started=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >>"$report" 2>&1
    rc=$?
    summary+=("$name: exit $rc in $(( $(date +%s) - started )) s")
    (( rc == 0 )) || failed+=("$name")
    log "== $name: exit $rc"
}

: >"$report"
log "effnet gpu-check $( ((dry)) && echo '--dry (CPU, shortened)' ) $(date -u +%Y-%m-%dT%H:%M:%SZ)"
log "machine: $(uname -srm), $(nproc) cores"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$report" 2>&1
fi
log "commit: $(git rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout')"

# 1. Wheels: only those whose package the interpreter does not have, into a folder of their own.
site="$work/site"
if compgen -G ".whl/*.whl" >/dev/null; then
    missing=$("$py" - <<'EOF'
import glob
import importlib.metadata as md

for path in sorted(glob.glob(".whl/*.whl")):
    name = path.split("/")[-1].split("-")[0]
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(path)
EOF
)
    if [[ -n "$missing" ]]; then
        # shellcheck disable=SC2086
        step wheels 60 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" $missing
    else
        summary+=("wheels: every package of .whl/ is installed already")
    fi
else
    summary+=("wheels: no .whl/ folder (scripts/gpu-wheels.sh fetches it)")
fi
export PYTHONPATH="$site:src${PYTHONPATH:+:$PYTHONPATH}"
step versions 60 "$py" -c "
import importlib.metadata as md, torch
import hydra, omegaconf  # the carried wheels import (the gpu tests import the rest)
print(', '.join(f'{n} {md.version(n)}' for n in ('torch', 'lightning', 'timm', 'torchmetrics', 'hydra-core', 'omegaconf')))
print('cuda:', torch.cuda.is_available() and torch.cuda.get_device_name(0), 'bf16:', torch.cuda.is_available() and torch.cuda.is_bf16_supported())
"

# 2. The gpu tests (they skip without CUDA: the dry run checks they are collected and skip cleanly).
step "gpu tests" 200 "$py" -m pytest -p no:cacheprovider -o addopts="" -m gpu -ra -v --timeout 180 \
    tests/test_memory.py tests/test_plan.py tests/training/test_train.py tests/deploy/test_export.py

# 3. The memory model against the allocator's peak.
if ((dry)); then
    step memory 60 "$py" -m effnet.memory --gpu-check --dry
else
    step memory 150 "$py" -m effnet.memory --gpu-check
fi

# 4. bench.py, B0 at 224 px in bf16-mixed (on the CPU in the dry run: 32 px, a few images).
bench=("$py" bench.py data=demo "data.root=$work/demo" model=b0 "bench.out=$work/bench.json" "hydra.run.dir=$work/bench")
if ((dry)); then
    bench+=(image_size=32 batch_size=4 trainer.accelerator=cpu trainer.precision=32-true
        bench.images=8 bench.val_images=4 bench.epochs=1 bench.ceiling_steps=1 bench.warmup_steps=0)
else
    bench+=(image_size=224 trainer.precision=bf16-mixed data.num_workers=auto data.threads=auto)
fi
step bench 150 env TERM=dumb "${bench[@]}"
if [[ -f "$work/bench.json" ]]; then
    log "-- bench.json"
    cat "$work/bench.json" >>"$report"
fi

log ""
log "== summary"
for line in "${summary[@]}"; do log "$line"; done
if ((${#failed[@]})); then
    log "FAILED: ${failed[*]}"
    exit 1
fi
log "all steps passed; report: $report"
