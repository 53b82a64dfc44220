#!/usr/bin/env bash
# What the sixth lent GPU session ran (`OUT=$OUT bash benchmarks/gpu_session6.sh`, `.gpu/data` carried: a copy of
# ../shared/data; shipped checkpoints only). gpu_session5.sh cut down to fit 15 minutes of device time with the
# machine's start: the eager device check of Titans alone, then Titans (MAC) at 11M tokens on 20 samples (seed 0:
# the samples of RMT's, ARMT's and FAM's seed-0 cells), batch 20, compiled on CUDA (429k tokens/s measured at 64k).
# Logs and the cell go straight to $OUT, so a run cut short still returns what it printed. The 11M cell is stored
# whole or not at all.
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
[ -d ../shared/data ] || { mkdir -p ../shared && ln -sfn "$PWD/.gpu/data" ../shared/data; }
T0=$SECONDS
left() { local s=$(( $1 - (SECONDS - T0) )); echo $(( s > 1 ? s : 1 )); }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch; print(torch.__version__)"; nproc; date -u; } > "$OUT/machine.txt" 2>&1
timeout 90 python3 benchmarks/device_check.py --device cuda --models titans > "$OUT/device_check.log" 2>&1 \
    || { echo "device check failed"; cat "$OUT/device_check.log"; exit 1; }
echo "device check done at $((SECONDS - T0)) s"
timeout $(left ${EVAL_END:-580}) python3 -m memlab eval checkpoints/titans-qa1 --task babilong:qa1 --lengths 11M \
    --samples 20 --batch-size 20 --seed 0 --time-budget 3000 --babi-dir ../shared/data/babi \
    --haystack $(ls ../shared/data/books/*.txt) --device cuda --compile --store "$OUT/titans-11m.sqlite" --json \
    > "$OUT/titans-11m.jsonl" 2> "$OUT/titans-11m.log"
echo "eval exit $? at $((SECONDS - T0)) s" | tee -a "$OUT/titans-11m.log"
cat "$OUT/titans-11m.log" "$OUT/titans-11m.jsonl"; date -u
