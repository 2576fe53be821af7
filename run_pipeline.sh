#!/usr/bin/env bash
# Run every stage in order, on the real Last.fm-1K archive or on generated data.
#
#   ./run_pipeline.sh                 # real data: downloads ~640 MB, needs network
#   ./run_pipeline.sh --synthetic     # offline: generates a dataset first
#
# Environment: DATA_DIR (default $LASTFM_DATA_DIR, else data/), WINDOW (default 1m),
# EPOCHS (default 10), SYNTH_USERS / SYNTH_PLAYS (default 200 / 2000000),
# LASTFM_API_KEY (tags from Last.fm; without it the synthetic run imports the
# generator's planted tags and the real run skips tags).
set -euo pipefail
cd "$(dirname "$0")"
DATA_DIR=${DATA_DIR:-${LASTFM_DATA_DIR:-data}}
WINDOW=${WINDOW:-1m}
EPOCHS=${EPOCHS:-10}
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
fi
PY=.venv/bin/python
D=(--data-dir "$DATA_DIR")
INPUT=()
TAGS=()
if [ "${1:-}" = "--synthetic" ]; then
  $PY synth.py --out "$DATA_DIR/synthetic" --users "${SYNTH_USERS:-200}" --plays "${SYNTH_PLAYS:-2000000}"
  INPUT=(--input "$DATA_DIR/synthetic/lastfm-dataset-1K")
  if [ -z "${LASTFM_API_KEY:-}" ]; then
    TAGS=(--tags-file "$DATA_DIR/synthetic/ground_truth/track_tags.tsv")
  fi
fi
$PY preprocess.py "${D[@]}" "${INPUT[@]}"
$PY sessionize.py "${D[@]}"
$PY fetch_tags.py "${D[@]}" --windows "$WINDOW" "${TAGS[@]}"
$PY train.py "${D[@]}" --window "$WINDOW" --epochs "$EPOCHS"
$PY test_model.py "${D[@]}" --window "$WINDOW"
$PY test_model.py "${D[@]}" --window "$WINDOW" --recommend
echo "Report: $DATA_DIR/reports/report.md"
