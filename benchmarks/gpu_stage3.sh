#!/usr/bin/env bash
# Issue 2, on a lent GPU: is RMT's stage 3 a gamble because its BPTT is truncated? From two stage-2 checkpoints
# (.gpu/s2_chain8 = session 8's compiled chain, 0.59 at 64k; .gpu/s2_session6 = session 6's, 0.28 at 64k), run
# stage-3 variants side by side, each followed by stage 6 (configs/rmt-qa1-stage6.yaml), and evaluate every result
# on the books at 64k (32 samples, seed 20000, as the CPU runs) and, after stage 6, at 1M (16 samples):
#   base      configs/rmt-qa1.yaml as shipped (lengths to 64k, BPTT through the last 32 segments)
#   lr1e4     the same with lr 1e-4
#   bptt128   the same with BPTT through the last 128 segments (16k tokens)
#   full16k   benchmarks/gpu_stage3/full16k.yaml: lengths 1k -> 16k, full BPTT (seed 4, and seed 5 as full16k-s5)
#   full32k   benchmarks/gpu_stage3/full32k.yaml: lengths 1k -> 32k, full BPTT
#   full16k-s6init  full16k from session 6's stage 2
# Eager on the GPU (no torch.compile). Every job has a wall-clock mark; a stage cut by it is evaluated as it stands
# (checkpoints every 5 steps). Needs .gpu/ (carried): the two stage-2 checkpoints and a copy of ../shared/data.
[ -d ../shared/data ] || { mkdir -p ../shared && ln -sfn "$PWD/.gpu/data" ../shared/data; }
CHECK_TIMEOUT=60 . benchmarks/gpu_env.sh  # OUT, M, DEV, BOOKS, left(); machine.txt; the device check
S3_END=${S3_END:-250}; E3_END=${E3_END:-280}; S6_END=${S6_END:-470}; E6_END=${E6_END:-540}
EV="--task babilong:qa1 --seed 20000 --babi-dir ../shared/data/babi --haystack $BOOKS --device $DEV --json"

pipeline() {  # name init recipe [overrides...]
  local n=$1 init=$2 recipe=$3; shift 3
  timeout $(left $S3_END) $M train --recipe $recipe --init-from $init "$@" --haystack $BOOKS --device $DEV --no-compile \
      --threads 2 --out runs/g3_$n --resume --no-progress > gl/s3_$n.log 2>&1
  echo "$n stage3 rc=$? at $((SECONDS - T0)) s" >> gl/times.txt
  timeout $(left $E3_END) $M eval runs/g3_$n $EV --lengths 64k --samples 32 --batch-size 32 --store gl/$n.sqlite \
      > gl/ev3_$n.jsonl 2>> gl/ev_$n.err
  timeout $(left $S6_END) $M train --recipe configs/rmt-qa1-stage6.yaml --init-from runs/g3_$n --haystack $BOOKS \
      --device $DEV --no-compile --threads 2 --out runs/g6_$n --resume --no-progress > gl/s6_$n.log 2>&1
  echo "$n stage6 rc=$? at $((SECONDS - T0)) s" >> gl/times.txt
  timeout $(left $E6_END) $M eval runs/g6_$n $EV --lengths 64k --samples 32 --batch-size 32 --store gl/$n.sqlite \
      > gl/ev6_$n.jsonl 2>> gl/ev_$n.err
  timeout $(left $E6_END) $M eval runs/g6_$n $EV --lengths 1M --samples 16 --batch-size 16 --store gl/$n.sqlite \
      >> gl/ev6_$n.jsonl 2>> gl/ev_$n.err
  for s in g3 g6; do [ -f runs/${s}_$n/trainer_state.pt ] && python3 benchmarks/export_curve.py runs/${s}_$n gl/curve_${s}_$n.json; done
}
S2=.gpu/s2_chain8
pipeline base $S2 configs/rmt-qa1.yaml &
pipeline lr1e4 $S2 configs/rmt-qa1.yaml --lr 1e-4 &
pipeline bptt128 $S2 configs/rmt-qa1.yaml --bptt-depth 128 &
pipeline full16k $S2 benchmarks/gpu_stage3/full16k.yaml &
pipeline full16k-s5 $S2 benchmarks/gpu_stage3/full16k.yaml --seed 5 &
pipeline full32k $S2 benchmarks/gpu_stage3/full32k.yaml &
pipeline full16k-s6init .gpu/s2_session6 benchmarks/gpu_stage3/full16k.yaml &
wait
tar -cf "$OUT/results.tar" gl
# the weights (no optimizer state) of every stage-3 and stage-6 result, 3-4 runs (~3.5 MB each) per file (16 MiB max)
for s in g3 g6; do
  tar -cf "$OUT/${s}a.tar" --exclude=trainer_state.pt runs/${s}_{base,lr1e4,bptt128} 2>/dev/null
  tar -cf "$OUT/${s}b.tar" --exclude=trainer_state.pt runs/${s}_full* 2>/dev/null
done
ls -la "$OUT"; cat gl/times.txt; echo "total $((SECONDS - T0)) s"
