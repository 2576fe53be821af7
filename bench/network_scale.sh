#!/usr/bin/env bash
# Not a timing: how a network's distance to the reference baselines changes with the number
# of listeners, the generator held (synth.py's defaults, PLAYS_PER_USER plays each). At each
# size: the data stages, one network at one configuration and seed (a first look, not the
# protocol's tuned budget), and SR and VSTAN tuned on validation, on the test split.
# Results: data/network_scale_<N>u/reports/results.{md,json}, one folder per size; publish
# with docs/build_results.py --add.
#
#   SIZES="100 400" bash bench/network_scale.sh     # about 10 minutes here
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SIZES=${SIZES:-100 200 400}
PLAYS_PER_USER=${PLAYS_PER_USER:-10000}
WINDOW=${WINDOW:-1m}
ARCH=${ARCH:-sasrec}
CONFIG=${CONFIG:-"--lr 0.002 --dropout 0.1"}  # SASRec's choice on MRR@20 in the 200-user protocol
COMMON=(--window "$WINDOW" --epochs "${EPOCHS:-20}" --cosine --verbose 0 --no-tensorboard
  --patience 3 --seed "${SEED:-0}" --monitor MRR@20)
for n in $SIZES; do
  DATA_DIR=data/network_scale_${n}u D=(--data-dir "$DATA_DIR")
  if [ ! -f "$DATA_DIR/synthetic/lastfm-dataset-1K/userid-timestamp-artid-artname-traid-traname.tsv" ]; then
    $PY synth.py --out "$DATA_DIR/synthetic" --users "$n" --plays "$((n * PLAYS_PER_USER))"
  fi
  $PY preprocess.py "${D[@]}" --input "$DATA_DIR/synthetic/lastfm-dataset-1K" --months 1
  $PY sessionize.py "${D[@]}" --windows "$WINDOW"
  $PY fetch_tags.py "${D[@]}" --windows "$WINDOW" \
    --tags-file "$DATA_DIR/synthetic/ground_truth/track_tags.tsv"
  out="$DATA_DIR/models/$WINDOW/${ARCH}_${n}u"
  # shellcheck disable=SC2086 # CONFIG holds several flags
  [ -f "$out/config.json" ] || $PY train.py "${D[@]}" --arch "$ARCH" $CONFIG "${COMMON[@]}" \
    --out "$out" --other-out "${out}_HR"
  $PY test_model.py "${D[@]}" --window "$WINDOW" --methods SR,VSTAN --models "$out,${out}_HR"
  echo "results: $DATA_DIR/reports/results.md"
done
