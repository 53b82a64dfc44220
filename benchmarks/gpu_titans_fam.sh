#!/usr/bin/env bash
# The second lent GPU session (see benchmarks/README.md, "GPU session"): trains Titans (MAC) and FAM on qa1 with
# the RMT recipe's conv + recency (configs/{titans,fam}-qa1-stage1.yaml, then configs/{titans,fam}-qa1.yaml),
# evaluates both from 1k to 1M tokens, and streams ARMT at 11M tokens beside them (the GPU is mostly idle with
# models this small, so the jobs run side by side). Each job has a wall-clock share; a job cut short keeps its
# last checkpoint, and every finished cell is in a store. Needs ../shared/data (linked from .data when absent).
# Results: $OUT/*.tar (logs and stores; checkpoints without trainer state; trainer states apart).
CHECK_TIMEOUT=90 . benchmarks/gpu_env.sh  # OUT, M, DEV, BOOKS, left(); machine.txt; the device check

STAGE1_END=${STAGE1_END:-290}; TRAIN_END=${TRAIN_END:-390}; EVAL_END=${EVAL_END:-520}
for m in titans fam; do
  ( timeout $(left $STAGE1_END) $M train --recipe configs/$m-qa1-stage1.yaml --haystack $BOOKS --device $DEV \
        --out runs/$m-qa1-stage1 --no-progress > gl/$m-stage1.log 2>&1
    timeout $(left $TRAIN_END) $M train --recipe configs/$m-qa1.yaml --haystack $BOOKS --device $DEV \
        --out runs/$m-qa1 --no-progress > gl/$m-stage2.log 2>&1
    ck=runs/$m-qa1; [ -f $ck/model.safetensors ] || ck=runs/$m-qa1-stage1
    timeout $(left $EVAL_END) $M eval $ck --task babilong:qa1 --lengths 1k,4k,16k,64k,256k,1M --samples 100 \
        --max-samples-long 20 --batch-size 100 --seed 0 --babi-dir ../shared/data/babi --device $DEV \
        --store gl/$m.sqlite --json > gl/$m-eval.jsonl 2> gl/$m-eval.log ) &
done
timeout $(left $EVAL_END) $M eval checkpoints/armt-qa1 --task babilong:qa1 --lengths 11M --samples 10 \
    --batch-size 10 --seed 0 --babi-dir ../shared/data/babi --device $DEV \
    --store gl/armt-11m.sqlite --json > gl/armt-11m.jsonl 2> gl/armt-11m.log &
wait
tar -cf "$OUT/results.tar" gl
for r in titans-qa1 titans-qa1-stage1 fam-qa1 fam-qa1-stage1; do
  [ -d runs/$r ] && tar -cf "$OUT/$r.tar" --exclude=trainer_state.pt runs/$r
  [ -f runs/$r/trainer_state.pt ] && tar -cf "$OUT/$r-state.tar" runs/$r/trainer_state.pt
done
ls -la "$OUT"; echo "total $((SECONDS - T0)) s"
