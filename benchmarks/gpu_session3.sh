#!/usr/bin/env bash
# For the next lent GPU session (see benchmarks/README.md, "GPU session"). Uses only shipped checkpoints, so it
# needs nothing from runs/:
#   1. nonfinite_hunt.py on checkpoints/titans-qa1 (trained on the CPU): its held-out batch on the CPU and on the
#      device at 256 and 1,024 tokens, naming the first module whose output is not finite (the earlier Titans
#      run went non-finite on CUDA at every two-segment step; 3 of 500 steps on the CPU);
#   2. Titans and FAM at 1M (20 samples) and 11M tokens (10), beside each other (issues 3 and 7);
#   3. ARMT at 11M on 10 more samples (seed 10: other samples than gpu_session2's seed-0 ten; 20 in all, issue 7).
# Each job has a wall-clock share; every finished cell is in a store. Results: $OUT/results.tar.
CHECK_TIMEOUT=90 . benchmarks/gpu_env.sh  # OUT, M, DEV, BOOKS, left(); machine.txt; the device check

HUNT_END=${HUNT_END:-150}; EVAL_END=${EVAL_END:-560}
for L in 256 1024; do
  timeout $(left $HUNT_END) python3 benchmarks/nonfinite_hunt.py checkpoints/titans-qa1 --length $L --batch 32 \
      --device $DEV >> gl/hunt.log 2>&1
done
for m in titans fam; do
  ( for ln in 1M:20 11M:10; do
      timeout $(left $EVAL_END) $M eval checkpoints/$m-qa1 --task babilong:qa1 --lengths ${ln%:*} --samples ${ln#*:} \
          --batch-size ${ln#*:} --seed 0 --time-budget 3000 --babi-dir ../shared/data/babi --device $DEV \
          --store gl/$m.sqlite --json >> gl/$m-eval.jsonl 2>> gl/$m-eval.log
    done ) &
done
timeout $(left $EVAL_END) $M eval checkpoints/armt-qa1 --task babilong:qa1 --lengths 11M --samples 10 \
    --batch-size 10 --seed 10 --time-budget 3000 --babi-dir ../shared/data/babi --device $DEV \
    --store gl/armt-11m.sqlite --json > gl/armt-11m.jsonl 2> gl/armt-11m.log &
wait
tar -cf "$OUT/results.tar" gl
ls -la "$OUT"; echo "total $((SECONDS - T0)) s"
