# Sourced by the GPU session scripts (gpu_session.sh, gpu_titans_fam.sh): paths, the wall-clock helper, the
# machine's description, and the device check that stops a session before it spends its time.
# Needs ../shared/data (linked from .data when absent: the device tool carries .data, not ../shared).
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT" gl
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
[ -d ../shared/data ] || { mkdir -p ../shared && ln -sfn "$PWD/.data" ../shared/data; }
M="python3 -m memlab"
DEV=${DEV:-cuda}
BOOKS=$(ls ../shared/data/books/*.txt)
T0=$SECONDS
# seconds until mark $1, at least 1: `timeout 0` would mean no limit at all (a job past its mark must stop)
left() { local s=$(( $1 - (SECONDS - T0) )); echo $(( s > 1 ? s : 1 )); }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch; print(torch.__version__)"; date -u; } > gl/machine.txt 2>&1
timeout ${CHECK_TIMEOUT:-120} python3 benchmarks/device_check.py --device $DEV 2>&1 | tee gl/device_check.log
[ "${PIPESTATUS[0]}" = 0 ] || { tar -cf "$OUT/results.tar" gl; exit 1; }
