#!/usr/bin/env bash
# Not a timing: the networks with and without their output paths (--copy, --counts) on the
# same generated data, at one configuration and one seed each (a first look, not the
# protocol's tuned budget), against every baseline on the test split. Results:
# $DATA_DIR/reports/results.{md,json}; publish with docs/build_results.py --add.
#
#   USERS=200 PLAYS=2000000 bash bench/output_paths.sh     # about 15 minutes here
#   SYNTH_ARGS="--track-zipf 2.5" DATA_DIR=data/op_more bash bench/output_paths.sh  # a variant
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA_DIR=${DATA_DIR:-data/output_paths_${USERS:-200}u}
WINDOW=${WINDOW:-1m}
ARCHS=${ARCHS:-bigru_att gru4rec}
CONFIG=${CONFIG:-"--lr 0.006 --dropout 0.1"}
COMMON=(--window "$WINDOW" --epochs "${EPOCHS:-20}" --cosine --verbose 0 --no-tensorboard
  --patience 3 --seed "${SEED:-0}")
D=(--data-dir "$DATA_DIR")
if [ ! -f "$DATA_DIR/synthetic/lastfm-dataset-1K/userid-timestamp-artid-artname-traid-traname.tsv" ]; then
  # shellcheck disable=SC2086 # SYNTH_ARGS holds several flags (a generator variant)
  $PY synth.py --out "$DATA_DIR/synthetic" --users "${USERS:-200}" --plays "${PLAYS:-2000000}" \
    ${SYNTH_ARGS:-}
fi
$PY preprocess.py "${D[@]}" --input "$DATA_DIR/synthetic/lastfm-dataset-1K" --months 1
$PY sessionize.py "${D[@]}" --windows "$WINDOW"
$PY fetch_tags.py "${D[@]}" --windows "$WINDOW" \
  --tags-file "$DATA_DIR/synthetic/ground_truth/track_tags.tsv"
MODELS=()
for arch in $ARCHS; do
  for path in plain copy counts; do
    out="$DATA_DIR/models/$WINDOW/${arch}_$path"
    flag=(); [ "$path" = plain ] || flag=(--"$path")
    # shellcheck disable=SC2086 # CONFIG holds several flags
    [ -f "$out/config.json" ] || $PY train.py "${D[@]}" --arch "$arch" "${flag[@]}" $CONFIG \
      "${COMMON[@]}" --out "$out"
    MODELS+=("$out")
  done
done
$PY test_model.py "${D[@]}" --window "$WINDOW" --models "$(IFS=,; echo "${MODELS[*]}")"
echo "results: $DATA_DIR/reports/results.md"
