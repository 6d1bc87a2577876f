#!/usr/bin/env bash
# The checks a session with a CUDA GPU runs in one go, in under 8 minutes, writing every result to files:
#
#     bash benchmarks/gpu_check.sh [RESULTS_DIR]        # default: gpu-check/
#
# It needs a Python with torch (a CUDA build), triton, pytest, click and vqkit's other dependencies already
# installed: it installs vqkit alone, without dependencies and without the network. Each step has its own time
# limit and its own log; a failing step is recorded and the next one runs. RESULTS_DIR/summary.md lists every
# step with its exit status and seconds; RESULTS_DIR/*.log hold the output, *.md the benchmark tables.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
SUMMARY="$OUT/summary.md"
START=$(date +%s)
# Whole-script budget: no step runs past it, whatever the steps' own limits add up to (8 minutes, less the
# margin for the last step's kill and the summary).
BUDGET_S=${GPU_CHECK_BUDGET_S:-450}
DEADLINE=$((START + BUDGET_S))
printf '| step | exit | seconds | log |\n|---|---:|---:|---|\n' >"$SUMMARY"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log it, add a row to the summary
    local name=$1 limit=$2
    shift 2
    local t0=$(date +%s)
    local left=$((DEADLINE - t0 - 10))
    if [ "$left" -lt 15 ]; then
        echo "| $name | skipped: out of the ${BUDGET_S}s budget | 0 | |" >>"$SUMMARY"
        echo "== $name skipped (budget)"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    local took=$(($(date +%s) - t0))
    [ $rc -eq 124 ] && echo "(stopped after ${limit}s)" >>"$OUT/$name.log"
    echo "| $name | $rc | $took | $name.log |" >>"$SUMMARY"
    echo "   exit $rc, ${took}s"
    return 0
}

# What is here: driver, GPUs, torch and its CUDA, and what vqkit makes of them.
step environment 30 bash -c "nvidia-smi; $PY -c '
import torch, sys
print(\"python\", sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda)
print(\"available\", torch.cuda.is_available(), \"devices\", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    print(i, torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i))
try:
    import triton; print(\"triton\", triton.__version__)
except Exception as err: print(\"triton missing:\", err)
'"
step install 45 "$PY" -m pip install --no-deps --no-build-isolation --no-index -e .
step device 30 "$PY" -c "
from vqkit.device import nvidia_driver_version, resolve_device, unusable_gpu_reason
from vqkit.search import fast_path
d = resolve_device('auto')
print('driver', nvidia_driver_version(), 'auto ->', d, 'unusable:', unusable_gpu_reason(), 'search:', fast_path(d))
"
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)

# In order of what matters most, should the budget run out.
# The GPU tests (the Triton kernel against the plain formula, the non-finite rule on CUDA, ...).
step pytest-gpu 90 "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUT/pytest-gpu.xml" tests
# compile with bf16 (Dynamo's recompilations logged: expect none after the first step), then bf16 alone.
step train-compile 70 env TORCH_LOGS=recompiles "$PY" -m vqkit train --device cuda --precision bf16 --compile \
    --steps 300 --eval-every 150 -o "$OUT/runs/compile"
grep -c "Recompiling function" "$OUT/train-compile.log" >"$OUT/recompiles.txt" 2>/dev/null
step train-bf16 35 "$PY" -m vqkit train --device cuda --precision bf16 --steps 300 --eval-every 150 -o "$OUT/runs/bf16"
# Nearest-code search and the vq quantizer on CUDA: every row names the path that ran.
step quantizer-speed 75 "$PY" benchmarks/quantizer_speed.py --device cuda --reps 3 --out "$OUT/quantizer_speed.md"
# Where a step waits on the host.
step sync-debug 35 "$PY" benchmarks/sync_debug.py --steps 60 --log-every 20 --out "$OUT/sync_debug.md"
# DDP over NCCL with two GPUs; with one, two processes must end in one clear line (exit 1, no traceback).
if [ "$GPUS" -ge 2 ]; then
    step ddp-nccl 60 torchrun --standalone --nproc-per-node 2 -m vqkit train --device cuda --steps 200 \
        --eval-every 100 -o "$OUT/runs/ddp"
else
    step ddp-one-gpu-two-processes 45 torchrun --standalone --nproc-per-node 2 -m vqkit train --device cuda \
        --steps 5 -o "$OUT/runs/ddp"
    NOTES="ddp-one-gpu-two-processes: a non-zero exit is expected; its log must hold one line per rank naming 2
processes and 1 GPU, and no 'invalid device ordinal'."
fi
# Training loop: fp32, bf16 and bf16 + compile against the tutorial's loop.
step train-speed 70 "$PY" benchmarks/train_speed.py --device cuda --batches 1024 --warmup 10 --steps 60 --repeats 1

echo "" >>"$SUMMARY"
echo "${NOTES:-}" >>"$SUMMARY"
echo "total $(($(date +%s) - START)) s, $GPUS GPU(s); recompiles logged in train-compile: $(cat "$OUT/recompiles.txt" 2>/dev/null)" >>"$SUMMARY"
cat "$SUMMARY"
