#!/usr/bin/env bash
# One call on a lent GPU machine (JAX there, no TensorFlow): a lease's whole work.
#   1. Throughput of every network at the peers' comparison sizes (30K tracks, embedding 64,
#      hidden 100, batch 256, prefixes up to 20), alone on the GPU, one process.
#   2. Every network (ARCHS) trained on the 1-month window with seeds 0 1 2 at the
#      configuration its validation chose in the 200-user protocol (CONFIG below), one
#      process per network in parallel; then its per-event test ranks (ranks_<arch>.npz).
#   3. In parallel with 2: the study's network on the time slices 1m.slice1..5, evaluated
#      there (network rows only), then the CPU run's configuration for a backend check.
# Every training run gets --time-budget from the time left before DEADLINE (seconds for the
# whole script), so the call ends with what finished; each stop is recorded.
#
# Before the call, on this machine (bench/README.md, "On a GPU"):
#   keras, namex, optree wheels in .whl/ at the versions requirements.lock pins; the splits and tags of 1m and 1m.slice1..5
#   (parquet and json only) in .gpudata/{sessions,tags}/; both in .git/info/exclude.
# Call: carry [".whl", ".gpudata"], command "LASTFM_COMMIT=<git rev-parse --short HEAD here>
# bash bench/gpu_run.sh", timeout_s 600 (the machine's copy has stale git metadata).
# Measured there (bench/README.md): with six processes compiling at once, first epochs took
# 40-150 s; a call for converged runs should skip the throughput phase (BENCH=0).
# Back in $OUT (data/gpu_out without one): ranks_<arch>.npz, ranks_check.npz, logs.tgz
# (logs, every model's config.json and history.csv, the slices' results). Merge here:
#   python test_model.py --window 1m --ranks-from <the ranks files>
# Dry run on this machine: SKIP_WHEELS=1 PY=.venv/bin/python LASTFM_DATA_DIR=<small data>
#   BENCH_EXAMPLES=2000 DEADLINE=300 bash bench/gpu_run.sh
# A second call for runs the first cut short: e.g. BENCH=0 CHECK=0 ARCHS="bigru_att sasrec"
#   SEEDS=0 DEADLINE=270 (then bench/ranks_subset.py drops the replaced rows).
set -u
OUT=${OUT:-data/gpu_out}
L=$OUT/logs
mkdir -p "$L"
T0=$(date +%s)
DEADLINE=${DEADLINE:-540}   # seconds for the whole script
EVAL_S=${EVAL_S:-80}        # kept for the test ranks after training
OVERHEAD_S=${OVERHEAD_S:-30} # per run: loading, compiling, the hybrid's fit
EPOCHS=${EPOCHS:-5}
ARCHS=${ARCHS:-bigru_att narm gru4rec sasrec stamp}
SEEDS=${SEEDS:-0 1 2}
elapsed() { echo $(( $(date +%s) - T0 )); }
if [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 LASTFM_DATA_DIR=${LASTFM_DATA_DIR:-.gpudata}
export XLA_PYTHON_CLIENT_PREALLOCATE=false OMP_NUM_THREADS=2
# Seeds 1 and 2 reuse seed 0's compiled steps (same shapes, same program).
export JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
PY=${PY:-python3}
D=$LASTFM_DATA_DIR
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $PY -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"
  # The carried wheels are the versions requirements.lock pins (what CI installs): say so.
  for pkg in keras namex optree; do
    want=$(grep -i "^$pkg==" requirements.lock | cut -d= -f3)
    have=$($PY -c "from importlib.metadata import version; print(version('$pkg'))" 2>/dev/null)
    [ "$want" = "$have" ] && echo "$pkg $have as locked" || echo "WARNING: $pkg $have, locked $want"
  done
} >"$L/device.txt" 2>&1
cat "$L/device.txt"

# The configuration each network's validation chose (protocol-200u-1m: lr 0.006, the
# dropout below, of dropout 0.1 / 0.25); all: cosine decay, patience 2, full softmax.
declare -A CONFIG=([bigru_att]="--dropout 0.25" [narm]="--dropout 0.25"
  [gru4rec]="--dropout 0.1" [sasrec]="--dropout 0.1" [stamp]="--dropout 0.1")
TRAIN=(train.py --epochs "$EPOCHS" --cosine --lr 0.006 --patience 2 --verbose 0 --no-tensorboard)
TRAIN_END=$(( DEADLINE - EVAL_S ))

# 1. Throughput, one process (imports once), full-width batches (one compiled step each).
[ "${BENCH:-1}" = 0 ] || timeout $(( DEADLINE / 5 )) $PY - "$ARCHS" "${BENCH_EXAMPLES:-60000}" >"$L/bench.jsonl" 2>"$L/bench.err" <<'PYEOF'
import runpy, sys
archs, n = sys.argv[1].split(), sys.argv[2]
for arch in archs:
    sys.argv = ["bench_model.py", "--arch", arch, "--items", "30000", "--examples", n,
                "--epochs", "3", "--no-tags", "--bucket-step", "0"]
    try:
        runpy.run_path("bench/bench_model.py", run_name="__main__")
    except Exception as e:  # one network's failure must not cost the others' figures
        print(f"{arch}: {type(e).__name__}: {e}", file=sys.stderr)
PYEOF
echo "bench done at $(elapsed) s"; cat "$L/bench.jsonl" 2>/dev/null

train_run() {  # name, runs left in this process (this one included), train.py flags...
  local name=$1 left=$2; shift 2
  local budget=$(( (TRAIN_END - $(elapsed)) / left - OVERHEAD_S ))
  if [ "$budget" -lt 15 ]; then
    echo "skip $name: $(elapsed) s elapsed" >>"$L/skipped.txt"; return 1
  fi
  $PY "${TRAIN[@]}" --time-budget "$budget" "$@" >"$L/train_$name.log" 2>&1
}

network() {  # arch: each of SEEDS, then the test ranks of those that finished
  local arch=$1 dirs=() n
  n=$(echo $SEEDS | wc -w)
  for seed in $SEEDS; do
    local out=$D/models/1m/${arch}_seed$seed
    train_run "${arch}_seed$seed" "$n" --window 1m --arch "$arch" ${CONFIG[$arch]} \
      --seed "$seed" --out "$out"
    n=$(( n - 1 ))
    [ -f "$out/config.json" ] && dirs+=("$out")
  done
  [ ${#dirs[@]} -gt 0 ] || return
  timeout $(( DEADLINE - $(elapsed) - 5 )) $PY test_model.py --window 1m --methods "" \
    --n-boot 10 --models "$(IFS=,; echo "${dirs[*]}")" --save-ranks "$OUT/ranks_$arch.npz" \
    >"$L/eval_$arch.log" 2>&1
}

slices() {  # the study's network on each time slice (in parallel), then the CPU run's
  local k    # configuration
  for k in 1 2 3 4 5; do
    train_run "slice$k" 1 --window "1m.slice$k" --arch bigru_att ${CONFIG[bigru_att]} \
      --seed 0 &
  done
  wait
  timeout $(( DEADLINE - $(elapsed) - 5 )) $PY test_model.py --window 1m --slices 5 \
    --methods "" --n-boot 10 >"$L/eval_slices.log" 2>&1
  [ "${CHECK:-1}" = 1 ] || return
  # The configuration of the published CPU (TensorFlow) runs: 3 epochs, dropout 0.1.
  local out=$D/models/1m/check_bigru_att_seed0
  local -a TRAIN=(train.py --epochs 3 --cosine --lr 0.006 --patience 3 --verbose 0 --no-tensorboard)
  train_run check 1 --window 1m --arch bigru_att --dropout 0.1 --seed 0 --out "$out" &&
    timeout $(( DEADLINE - $(elapsed) - 5 )) $PY test_model.py --window 1m --methods "" \
      --n-boot 10 --models "$out" --save-ranks "$OUT/ranks_check.npz" >"$L/eval_check.log" 2>&1
}

for arch in $ARCHS; do network "$arch" & done
[ -n "${NO_SLICES:-}" ] || slices &
wait
echo "trained and evaluated at $(elapsed) s"
for d in "$D"/models/*/*/ "$D"/models/1m.slice*/; do
  [ -f "$d/config.json" ] || continue
  n=$(echo "${d%/}" | sed "s|$D/models/||; s|/|__|g")
  cp "$d/config.json" "$L/config_$n.json"
  [ -f "$d/history.csv" ] && cp "$d/history.csv" "$L/history_$n.csv"
done
cp "$D"/reports/results_slices.json "$L/" 2>/dev/null
nvidia-smi --query-gpu=memory.used --format=csv >>"$L/device.txt" 2>&1
tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$L"
echo "total $(elapsed) s"
