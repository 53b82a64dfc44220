#!/usr/bin/env bash
# One BABILong qa1 sample of 100M tokens of book haystack per shipped recurrent model, at batch 1, compiled, on this
# CPU (issue 7), one model after another: `bash benchmarks/streaming_100m.sh [fam sleep titans ...]` (default: fam
# sleep titans; rmt and armt were measured in benchmarks/results/streaming_100m/). The sample is the one RMT and ARMT
# streamed (seed 2). Each cell saves its progress every 5 minutes (`memlab eval --save-every 300`) into
# runs/s100m_lazy_<model>-qa1.sqlite.progress/, so running this script again after an interruption (a session's end)
# resumes the cell where it was saved; a finished cell is skipped. Each process appends its `/usr/bin/time -v` to
# runs/time_v_100m_<model>.txt (peak RSS per process) and its per-minute progress to runs/<model>_100m_progress.log;
# the finished cell's JSON line goes to benchmarks/results/streaming_100m/<model>_100m_lazy.jsonl.
# Time at batch 1 on 2 cores: FAM ~20-28k tokens/s (~1-1.4 h), sleep ~20k (~1.4 h), Titans ~10-19k (1.5-3 h).
set -u
cd "$(dirname "$0")/.."
OUT=benchmarks/results/streaming_100m
mkdir -p runs "$OUT"
for m in "${@:-fam sleep titans}"; do
  for name in $m; do
    ck=checkpoints/$name-qa1
    [ -d "$ck" ] || { echo "no checkpoint $ck (known: fam sleep titans rmt armt)" >&2; exit 2; }
    echo "$name 100M: $(date -u +%FT%TZ) start" >> "runs/${name}_100m_progress.log"
    /usr/bin/time -v -a -o "runs/time_v_100m_$name.txt" memlab eval "$ck" --task babilong:qa1 --lengths 100M \
        --samples 1 --batch-size 1 --seed 2 --time-budget 100000 --babi-dir ../shared/data/babi \
        --haystack ../shared/data/books/*.txt --compile --json --save-every 300 \
        --store "runs/s100m_lazy_$name-qa1.sqlite" >> "$OUT/${name}_100m_lazy.jsonl" 2>> "runs/${name}_100m_progress.log" || exit $?
  done
done
