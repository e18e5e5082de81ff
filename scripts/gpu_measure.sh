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
# XLA's GEMM autotuning stays at its default level: on jax 0.11.2 --xla_gpu_autotune_level=0
# made every large program 25x slower (docs/performance.md, 2026-11-30). The peers inherit
# the same XLA_FLAGS.
# Programs and peers share the card one after the other: nobody preallocates 75% of it, and
# the asynchronous CUDA allocator hands freed memory back (with preallocation off, jax's own
# allocator failed to find 40-80 GiB contiguous after earlier programs in the process).
export XLA_PYTHON_CLIENT_PREALLOCATE=false TF_GPU_ALLOCATOR=cuda_malloc_async PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
  > "$out/nvidia_smi.csv" 2>&1
timeout "${KILL:-540}" python3 scripts/gpu_measure.py --out "$out/results.jsonl" \
  --peers .peers --deadline "${DEADLINE:-500}" 2>&1 | tee "$out/log.txt"
