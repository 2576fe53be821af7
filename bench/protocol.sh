#!/usr/bin/env bash
# The evaluation protocol end to end on generated data: every baseline tuned on validation,
# every network (the study's and its peers) tuned on validation with the same budget (the
# GRID below and its reference implementation's stock settings, seed 0), chosen on
# validation MRR@20 and on HR@20, each choice trained with more seeds, the hybrid against
# the baseline ensemble, segments, and time slices for the baselines and the study's
# network. Results: $DATA_DIR/reports/results.{md,json} and results_slices.{md,json};
# publish them with docs/build_results.py --add.
#
#   USERS=200 PLAYS=2000000 bash bench/protocol.sh             # hours here (7-9 runs a network)
#   USERS=992 PLAYS=19150000 EPOCHS=5 bash bench/protocol.sh   # full scale: many hours
#   SYNTH_ARGS="--session-loop 0.6 --library-scale 0.2" DATA_DIR=... bash bench/protocol.sh
#                                                             # a generator variant
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA_DIR=${DATA_DIR:-data/protocol_${USERS:-200}u}
WINDOW=${WINDOW:-1m}
EPOCHS=${EPOCHS:-10}
SEEDS=${SEEDS-1 2}           # seeds added to the tuned configuration's seed 0 ("": none)
SLICES=${SLICES:-5}          # 0: no time slices
ARCHS=${ARCHS:-bigru_att narm gru4rec sasrec stamp}  # ARCH:PATH trains ARCH with --PATH
# (copy or counts, train.py's output paths), a network of its own: e.g. "sasrec:counts"
# The validation budget of every network: these configurations (seed 0) and the stock
# settings of its reference implementation (stock below), each trained once and chosen on
# validation MRR@20 and on HR@20 (train.py --other-out keeps the best epoch by each:
# what two runs monitoring one metric each would keep).
GRID=${GRID:-"--lr 0.002 --dropout 0.1;--lr 0.002 --dropout 0.25;--lr 0.006 --dropout 0.1;--lr 0.006 --dropout 0.25"}
# Configurations added to a budget after a run (numbered after the stock settings, so the
# folders already trained keep their names and are reused): e.g. a wider learning rate.
EXTRA_GRID=${EXTRA_GRID:-}
SLICE_ARCHS=${SLICE_ARCHS:-$ARCHS}  # the ARCHS entries whose choices are trained per slice
EVAL=${EVAL:---session-aware}  # test_model.py's extra options: the session-aware baselines' own table
HISTORY=${HISTORY:-15}     # > 0: each HISTORY_ARCHS network's choice on MRR@20 also trained
HISTORY_ARCHS=${HISTORY_ARCHS:-bigru_att sasrec}  # with --history N (session-aware), 3 seeds
COMMON=(--epochs "$EPOCHS" --cosine --verbose 0 --no-tensorboard --patience 3)
stock() {  # a network's reference settings (RecBole's model and overall defaults: constant
  # lr 0.001, CE loss; its batch 2048, 300 epochs and stopping after 10 are not taken:
  # every network here has the same batch, epochs and patience)
  case "$1" in
    sasrec) echo "--blocks 2 --heads 2 --emb-dim 64 --dropout 0.5 --lr 0.001 --no-cosine" ;;
    gru4rec) echo "--emb-dim 64 --hidden 128 --dropout 0.3 --lr 0.001 --no-cosine" ;;
    narm) echo "--emb-dim 64 --hidden 128 --dropout 0.25 --lr 0.001 --no-cosine" ;;  # RecBole: 0.25 embeddings, 0.5 before the output; one rate here
    stamp) echo "--emb-dim 64 --lr 0.001 --no-cosine" ;;
    *) echo "--no-cosine" ;;  # the study's network: train.py's defaults, a constant lr
  esac
}
D=(--data-dir "$DATA_DIR")
INPUT=${INPUT:-}  # a Last.fm-1K file or folder instead of generated data (no tags: the
# API is unreachable here, so every network trains with --no-tags), e.g. the real sample:
# INPUT=../shared/data/lastfm-1k-sample/user_000001-history.tsv WINDOW=all SLICES=0
#   PREPROCESS_ARGS="--write-all --months 1" SESSIONIZE_ARGS="--min-user-sessions 1"
PREPROCESS_ARGS=${PREPROCESS_ARGS:---months 1}
SESSIONIZE_ARGS=${SESSIONIZE_ARGS:-}
TAGS=()
if [ -z "$INPUT" ]; then
  INPUT="$DATA_DIR/synthetic/lastfm-dataset-1K"
  [ -f "$INPUT/userid-timestamp-artid-artname-traid-traname.tsv" ] || \
    $PY synth.py --out "$DATA_DIR/synthetic" --users "${USERS:-200}" --plays "${PLAYS:-2000000}" \
      ${SYNTH_ARGS:-}
  TAGS=(--tags-file "$DATA_DIR/synthetic/ground_truth/track_tags.tsv")
else
  COMMON+=(--no-tags)
fi
$PY preprocess.py "${D[@]}" --input "$INPUT" $PREPROCESS_ARGS
$PY sessionize.py "${D[@]}" --windows "$WINDOW" $SESSIONIZE_ARGS
[ "$SLICES" -gt 0 ] && $PY sessionize.py "${D[@]}" --windows "$WINDOW" --slices "$SLICES" $SESSIONIZE_ARGS
tags() {  # WINDOW: the generator's tags for that window's vocabulary (none for INPUT)
  [ ${#TAGS[@]} -eq 0 ] || $PY fetch_tags.py "${D[@]}" --windows "$1" "${TAGS[@]}"
}
tags "$WINDOW"
best_of() {  # the folder whose config.json has the best validation score (its --monitor)
  $PY -c 'import json, sys; print(max(sys.argv[1:], key=lambda d: json.load(open(d + "/config.json"))["best_valid"]))' "$@"
}
pair() {  # WINDOW I J SEED OUT HR: configuration I of $arch's ${configs[@]} kept by MRR@20
  # in OUT and J by HR@20 in HR, one run watching both when I = J; complete folders are kept
  local w=$1 i=$2 j=$3 seed=$4 out=$5 hr=$6 both=()
  [ "$i" = "$j" ] && both=(--other-out "$hr")
  [ -f "$out/config.json" ] && { [ "$i" != "$j" ] || [ -f "$hr/config.json" ]; } || \
    $PY train.py "${D[@]}" --window "$w" --arch "$arch" "${COMMON[@]}" ${configs[$i]} \
    --seed "$seed" --out "$out" --monitor MRR@20 "${both[@]}"
  [ -f "$hr/config.json" ] || $PY train.py "${D[@]}" --window "$w" --arch "$arch" \
    "${COMMON[@]}" ${configs[$j]} --seed "$seed" --out "$hr" --monitor HR@20
}
MODELS=() HR_MODELS=()
declare -A CONFIGS CHOSEN  # per ARCHS entry: its budget (;-separated) and chosen indices
M="$DATA_DIR/models/$WINDOW"
for entry in $ARCHS; do
  arch=${entry%%:*} name=${entry/:/_} path=""
  [ "$entry" = "$arch" ] || path="--${entry#*:}"
  IFS=';' read -ra configs <<< "$GRID"
  configs+=("$(stock "$arch")")
  [ -z "$EXTRA_GRID" ] || { IFS=';' read -ra extra <<< "$EXTRA_GRID"; configs+=("${extra[@]}"); }
  for c in "${!configs[@]}"; do configs[$c]+=" $path"; done
  CONFIGS[$entry]=$(IFS=';'; echo "${configs[*]}")
  tried=() tried_hr=()
  for i in "${!configs[@]}"; do  # one training keeps the best epoch by each metric
    out="$M/${name}_cfg$i" hr="$M/${name}_HR_cfg$i"
    pair "$WINDOW" "$i" "$i" 0 "$out" "$hr"
    tried+=("$out") tried_hr+=("$hr")
  done
  best=$(best_of "${tried[@]}")
  best_hr=$(best_of "${tried_hr[@]}")
  i=${best##*_cfg} j=${best_hr##*_cfg}
  MODELS+=("$best") HR_MODELS+=("$best_hr") CHOSEN[$entry]="$i $j"
  for seed in $SEEDS; do  # the choice on MRR@20, then that on HR@20 (one run if the same)
    out="$M/${name}_cfg${i}_seed$seed" hr="$M/${name}_HR_cfg${j}_seed$seed"
    pair "$WINDOW" "$i" "$j" "$seed" "$out" "$hr"
    MODELS+=("$out") HR_MODELS+=("$hr")
  done
  if [ "$HISTORY" -gt 0 ] && [[ " $HISTORY_ARCHS " == *" $name "* ]]; then
    for seed in 0 $SEEDS; do  # the choice on MRR@20, reading the listener's earlier sessions
      out="$M/${name}_cfg${i}_hist${HISTORY}_seed$seed"
      [ -f "$out/config.json" ] || $PY train.py "${D[@]}" --window "$WINDOW" --arch "$arch" \
        "${COMMON[@]}" ${configs[$i]} --history "$HISTORY" --seed "$seed" --out "$out"
      MODELS+=("$out")
    done
  fi
done
MODELS+=("${HR_MODELS[@]}")
$PY test_model.py "${D[@]}" --window "$WINDOW" $EVAL --models "$(IFS=,; echo "${MODELS[*]}")"
if [ "$SLICES" -eq 0 ]; then echo "results: $DATA_DIR/reports/results.md"; exit 0; fi
for k in $(seq 1 "$SLICES"); do tags "$WINDOW.slice$k"; done
S=() SM="$DATA_DIR/models/slices/{window}"  # one list names every slice's networks
for entry in $SLICE_ARCHS; do  # each network's two choices (seed 0) trained on each slice
  arch=${entry%%:*} name=${entry/:/_}
  IFS=';' read -ra configs <<< "${CONFIGS[$entry]}"
  read -r i j <<< "${CHOSEN[$entry]}"
  S+=("$SM/${name}_cfg$i" "$SM/${name}_HR_cfg$j")
  for k in $(seq 1 "$SLICES"); do
    w="$WINDOW.slice$k"; dir=${SM/\{window\}/$w}
    pair "$w" "$i" "$j" 0 "$dir/${name}_cfg$i" "$dir/${name}_HR_cfg$j"
  done
done
$PY test_model.py "${D[@]}" --window "$WINDOW" $EVAL --slices "$SLICES" \
  --models "$(IFS=,; echo "${S[*]}")"
echo "results: $DATA_DIR/reports/results.md and results_slices.md"
