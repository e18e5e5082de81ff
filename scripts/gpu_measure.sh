#!/usr/bin/env bash
# One prepared accelerator run (#15), from the repository root of the device machine:
#
#   bash scripts/gpu_measure.sh "$OUT"
#
# Brings: .whl/ (wheels of the packages that machine lacks: ml_collections, grain,
# array_record, portpicker; docs/performance.md says how they were downloaded) and .peers/
# (copies of ../shared/peers). Writes results.jsonl (one JSON line per measurement),
# log.txt and nvidia_smi.csv to the output folder, and stops itself: the driver drops what
# would not finish before DEADLINE seconds (default 500), and the whole run is killed at
# KILL seconds (default 540).
set -uo pipefail
out=${1:?usage: scripts/gpu_measure.sh OUT_DIR}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
fi
# GEMM autotuning off: it multiplies the 24-layer compiles, and for these large bf16 matmuls
# cuBLAS's own choice is the one that counts. The peers run under the same flags.
export XLA_FLAGS="${XLA_FLAGS:---xla_gpu_autotune_level=0}"
# Programs and peers share the card one after the other: nobody preallocates 75% of it.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
  > "$out/nvidia_smi.csv" 2>&1
timeout "${KILL:-540}" python3 scripts/gpu_measure.py --out "$out/results.jsonl" \
  --peers .peers --deadline "${DEADLINE:-500}" 2>&1 | tee "$out/log.txt"
