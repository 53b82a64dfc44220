#!/usr/bin/env bash
# For the next lent GPU session (see benchmarks/README.md, "GPU session"). Shipped checkpoints only; `.gpu/data` (a
# copy of ../shared/data) carried. What gpu_session4.sh could not finish: Titans (MAC) at 11M tokens on 20 samples
# (issue 7), compiled on CUDA now that its compile works there (429k tokens/s at 64k, batch 20: ~9 minutes).
#   1. device_check.py --compile (every fixed-state model compiled on CUDA against the CPU's eager logits);
#   2. Titans at 64k then 11M, 20 samples (seed 0: the samples of RMT's and FAM's seed-0 cells), batch 20.
# The 11M cell is stored whole or not at all. Results: $OUT/results.tar.
[ -d ../shared/data ] || { mkdir -p ../shared && ln -sfn "$PWD/.gpu/data" ../shared/data; }
CHECK_TIMEOUT=60 . benchmarks/gpu_env.sh  # OUT, M, DEV, BOOKS, left(); machine.txt; the eager device check

EVAL_END=${EVAL_END:-570}
timeout $(left 200) python3 benchmarks/device_check.py --device $DEV --compile > gl/device_check_compile.log 2>&1 &
timeout $(left $EVAL_END) $M eval checkpoints/titans-qa1 --task babilong:qa1 --lengths 64k,11M --samples 20 \
    --batch-size 20 --seed 0 --time-budget 3000 --babi-dir ../shared/data/babi --haystack $BOOKS --device $DEV \
    --compile --store gl/titans-11m.sqlite --json > gl/titans-11m.jsonl 2> gl/titans-11m.log
echo "eval exit $? at $((SECONDS - T0)) s" >> gl/titans-11m.log
wait
tar -cf "$OUT/results.tar" gl
ls -la "$OUT"; echo "total $((SECONDS - T0)) s"
