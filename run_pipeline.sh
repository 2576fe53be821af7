#!/usr/bin/env bash
# Run every stage in order, on the real Last.fm-1K archive or on generated data.
#
#   ./run_pipeline.sh                 # real data: downloads ~640 MB, needs network
#   ./run_pipeline.sh --synthetic     # offline: generates a dataset first
#
# Environment: WINDOW (default 1m), EPOCHS (default 10), SYNTH_USERS / SYNTH_PLAYS
# (default 200 / 2000000), LASTFM_API_KEY (tags from Last.fm; without it the
# synthetic run imports the generator's planted tags and the real run skips tags).
set -euo pipefail
cd "$(dirname "$0")"
WINDOW=${WINDOW:-1m}
EPOCHS=${EPOCHS:-10}
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
fi
PY=.venv/bin/python
INPUT=()
TAGS=()
if [ "${1:-}" = "--synthetic" ]; then
  $PY synth.py --out data/synthetic --users "${SYNTH_USERS:-200}" --plays "${SYNTH_PLAYS:-2000000}"
  INPUT=(--input data/synthetic/lastfm-dataset-1K)
  if [ -z "${LASTFM_API_KEY:-}" ]; then
    TAGS=(--tags-file data/synthetic/ground_truth/track_tags.tsv)
  fi
fi
$PY preprocess.py "${INPUT[@]}"
$PY sessionize.py
$PY fetch_tags.py --windows "$WINDOW" "${TAGS[@]}"
$PY train.py --window "$WINDOW" --epochs "$EPOCHS"
$PY test_model.py --window "$WINDOW"
$PY test_model.py --window "$WINDOW" --recommend
echo "Report: data/reports/report.md"
