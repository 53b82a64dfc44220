#!/usr/bin/env bash
# One lent GPU session, as run through the device tool (see benchmarks/README.md, "GPU session"): checks every
# model on CUDA, trains Titans (MAC) and FAM on qa1 (the recipes' two stages), resumes the sleep model's qa1+qa2
# training, streams RMT and ARMT at 1M and 11M tokens, then evaluates the new checkpoints and the sleep curve.
# Each job has a wall-clock share (the session has ~10 minutes); a job cut short keeps its last checkpoint.
# Needs ../shared/data (here linked from .data when absent). Results: $OUT/*.tar (checkpoints, logs, stores).
. benchmarks/gpu_env.sh  # OUT, M, DEV, BOOKS, left(); machine.txt; the device check

TRAIN_END=${TRAIN_END:-370}; EVAL_END=${EVAL_END:-545}
for m in titans fam; do
  ( timeout $(( $(left $TRAIN_END) - 110 )) $M train --recipe configs/$m-qa1-stage1.yaml --haystack $BOOKS --device $DEV \
        --out runs/$m-qa1-stage1 --no-progress > gl/$m-stage1.log 2>&1
    timeout $(left $TRAIN_END) $M train --recipe configs/$m-qa1.yaml --haystack $BOOKS --device $DEV \
        --out runs/$m-qa1 --no-progress > gl/$m-stage2.log 2>&1 ) &
  PIDS="${PIDS:-} $!"
done
timeout $(left $TRAIN_END) $M train --recipe configs/sleep-qa2.yaml --haystack $BOOKS --device $DEV \
    --out runs/sleep-qa2 --resume --no-progress > gl/sleep-qa2.log 2>&1 &
PIDS="$PIDS $!"
( timeout $(left $EVAL_END) $M eval checkpoints/rmt-qa1 checkpoints/armt-qa1 --task babilong:qa1 --lengths 1M,11M \
      --samples 100 --max-samples-long 20 --batch-size 20 --seed 0 --babi-dir ../shared/data/babi --device $DEV \
      --store gl/long.sqlite --json > gl/long.jsonl 2> gl/long.log ) &
wait $PIDS

for m in titans fam; do
  ck=runs/$m-qa1; [ -f $ck/model.safetensors ] || ck=runs/$m-qa1-stage1
  timeout $(left $EVAL_END) $M eval $ck --task babilong:qa1,qa2 --lengths 1k,4k,16k,64k,256k,1M --samples 100 \
      --batch-size 100 --seed 0 --babi-dir ../shared/data/babi --device $DEV --store gl/$m.sqlite --json \
      > gl/$m-eval.jsonl 2> gl/$m-eval.log &
done
timeout $(left $EVAL_END) python3 benchmarks/sleep_curve.py runs/sleep-qa2 --tasks 1,2 --lengths 1k,4k --passes 0,1,2,4,8 \
    --samples 100 --batch-size 100 --device $DEV --store gl/sleep_curve.sqlite --out sleep_curve_gpu > gl/sleep-curve.log 2>&1 &
wait
cp benchmarks/results/sleep_curve_gpu.json gl/ 2>/dev/null
tar -cf "$OUT/results.tar" gl
for r in titans-qa1 titans-qa1-stage1 fam-qa1 fam-qa1-stage1; do
  [ -d runs/$r ] && tar -cf "$OUT/$r.tar" --exclude=trainer_state.pt runs/$r
done
for r in titans-qa1 fam-qa1; do [ -f runs/$r/trainer_state.pt ] && tar -cf "$OUT/$r-state.tar" runs/$r/trainer_state.pt; done
tar -cf "$OUT/sleep-qa2.tar" runs/sleep-qa2
ls -la "$OUT"; echo "total $((SECONDS - T0)) s"
