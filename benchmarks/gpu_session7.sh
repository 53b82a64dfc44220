#!/usr/bin/env bash
# For the next lent GPU session (`OUT=$OUT bash benchmarks/gpu_session7.sh`, `.gpu/data` carried: a copy of
# ../shared/data; shipped checkpoints only). What gpu_session6.sh could not finish in 573 s on an H200: Titans (MAC)
# at 11M tokens on 20 samples (seed 0), batch 20, compiled on CUDA, now with the whole call for the cell (no device
# check first: gpu_session4/6 checked the shipped Titans on CUDA, eager and compiled). `memlab eval` now logs the
# tokens streamed and the rate once a minute inside the cell, so a cell cut short still tells its throughput
# ($OUT/titans-11m.log). Run it as the session's first call with timeout_s 600.
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
[ -d ../shared/data ] || { mkdir -p ../shared && ln -sfn "$PWD/.gpu/data" ../shared/data; }
T0=$SECONDS
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch; print(torch.__version__)"; nproc; date -u; } > "$OUT/machine.txt" 2>&1
timeout ${EVAL_END:-590} python3 -m memlab eval checkpoints/titans-qa1 --task babilong:qa1 --lengths 11M \
    --samples 20 --batch-size 20 --seed 0 --time-budget 3000 --babi-dir ../shared/data/babi \
    --haystack $(ls ../shared/data/books/*.txt) --device cuda --compile --store "$OUT/titans-11m.sqlite" --json \
    > "$OUT/titans-11m.jsonl" 2> "$OUT/titans-11m.log"
echo "eval exit $? at $((SECONDS - T0)) s" | tee -a "$OUT/titans-11m.log"
grep -v Warning "$OUT/titans-11m.log"; cat "$OUT/titans-11m.jsonl"; date -u
