#!/usr/bin/env bash
# One call on a lent GPU machine (JAX there, no TensorFlow): throughput at the
# NARM-comparison sizes (full and sampled softmax), then the full-scale
# training runs on the generated 1-month window and every trained model's
# per-event test ranks (merge here with test_model.py --ranks-from).
#
# Before the call, on this machine:
#   keras, namex, optree wheels in .whl/; the 1m window's splits and tags in
#   .gpudata/{sessions,tags}/1m/ (both folders listed in .git/info/exclude)
# Calls: carry [".whl", ".gpudata"], command "bash bench/gpu_run.sh bench", then
# (while the machine is warm) "EPOCHS=8 CAP=140 BUDGET_S=530 bash bench/gpu_run.sh train"
# (the calls that gave the README's GPU figures: 199 s and 354 s on an H200).
# Results land in $OUT (data/gpu_out without one). Each step has a time cap
# (BUDGET_S, seconds for the whole call) so that a slow step cannot eat the lease.
set -u
PHASE=${1:-all}
OUT=${OUT:-data/gpu_out}
mkdir -p "$OUT"
T0=$(date +%s)
left() { echo $(( ${BUDGET_S:-540} - ($(date +%s) - T0) )); }
if [ -z "${SKIP_WHEELS:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 LASTFM_DATA_DIR=${LASTFM_DATA_DIR:-.gpudata}
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/bench.log"
$PY -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)" \
  2>&1 | tee -a "$OUT/bench.log"

# 1. Throughput of every network (ARCHS) at NARM's sizes (30K items, emb 64, hidden 100,
#    batch 256, L 20) and at the 1m window's vocabulary (106K tracks).
if [ "$PHASE" != train ]; then
  BENCH="bench/bench_model.py --examples ${BENCH_EXAMPLES:-100000} --epochs 3 --no-tags"
  for arch in ${ARCHS:-bigru_att narm gru4rec sasrec stamp}; do
    for extra in "--items 30000" "--items 106395"; do
      timeout 100 $PY $BENCH --arch "$arch" $extra 2>&1 | grep -E '^\{|Error|error' \
        | tee -a "$OUT/bench.log"
    done
  done
fi
[ "$PHASE" = bench ] && exit 0

# 2. Full-scale training runs, chosen on validation MRR@20 only.
TRAIN="train.py --window 1m --epochs ${EPOCHS:-6} --cosine --lr 0.006 --patience 2 --verbose 0"
run() {  # name, cap_s, flags
  local name=$1 cap=$2; shift 2
  [ "$(left)" -gt 60 ] || { echo "skip $name: $(left) s left" | tee -a "$OUT/train.log"; return; }
  [ "$cap" -lt "$(( $(left) - 40 ))" ] || cap=$(( $(left) - 40 ))
  echo "== $name ($*) cap ${cap}s" | tee -a "$OUT/train.log"
  timeout "$cap" $PY $TRAIN --out "$LASTFM_DATA_DIR/models/$name" "$@" 2>&1 \
    | grep -E '"epoch"|best epoch|Error|error' | tee -a "$OUT/train.log"
}
CAP=${CAP:-150}
run succ_tags "$CAP"
run succ128_tags "$CAP" --emb-dim 128
# Without tags: the configuration that won on validation, tags off.
emb=$($PY - "$LASTFM_DATA_DIR/models" <<'PYEOF'
import json, sys
from pathlib import Path
best = {}
for n in ("succ_tags", "succ128_tags"):
    p = Path(sys.argv[1]) / n / "config.json"
    if p.exists() and "best_valid" in json.loads(p.read_text()):
        c = json.loads(p.read_text())
        best[c["model"]["emb_dim"]] = c["best_valid"]
print(max(best, key=best.get) if best else 64)
PYEOF
)
run succ_notags "$CAP" --no-tags --emb-dim "$emb"
# The peers at the same settings (seed 0; SEEDS=1,2 adds seeds), for the table of networks.
for arch in ${PEERS:-narm gru4rec sasrec stamp}; do
  for seed in 0 ${SEEDS//,/ }; do
    run "${arch}_seed$seed" "$CAP" --arch "$arch" --seed "$seed"
  done
done

# 3. Test ranks of every trained model (the choice among them is made on validation).
dirs=$(ls -d "$LASTFM_DATA_DIR"/models/*/ 2>/dev/null | while read -r d; do
  [ -f "$d/model.keras" ] && echo "${d%/}"; done | paste -sd, -)
if [ -n "$dirs" ]; then
  timeout "$(( $(left) > 30 ? $(left) : 30 ))" $PY test_model.py --window 1m --methods "" \
    --models "$dirs" --n-boot 200 --save-ranks "$OUT/ranks.npz" 2>&1 | tail -n 30 \
    | tee -a "$OUT/eval.log"
  for d in ${dirs//,/ }; do cp "$d/config.json" "$OUT/config_$(basename "$d").json"; done
fi
echo "total $(( $(date +%s) - T0 )) s" | tee -a "$OUT/train.log"
