#!/usr/bin/env bash
# Make the default bundle from nothing: training recordings, encoder pretraining, the head,
# the three ablation heads, optionally more head training on new seeds (v3) and an encoder
# pretrained further with hard pairs under the head (v5, then v7), a head that also reads the CLS
# token (v8) with its ablations, two more hard-pair rounds under that head (v9, v10) and the head
# trained on with 72 more seeds (v11), then 72 more (v12), and a hard-pair round on a CUDA GPU
# under that head (v13), a decay phase for that head (v14) and the same again with more seeds
# (v15 and v16: 72 each; v17: 128; v18: 192), each with its four ablations, threshold calibration
# and the evaluation (against the ablations of the last of v8 to v18 that ran, else against the
# first head's, trained at its budget).
# Every step is a `patchsight` command; docs/evaluation.md lists the ones the shipped bundle ran.
#
#   bash scripts/train-default-bundle.sh               # 2 CPU cores: about 2 hours
#   DEVICE=cuda DATA_WORKERS=10 JOBS=4 PRETRAIN_MIN=4 FINETUNE_MIN=3 \
#     PRETRAIN_BATCH=512 TRAIN_SEEDS="$(seq -s' ' 1 48)" bash scripts/train-default-bundle.sh
#
# Knobs (environment): RUNS (work folder, default runs), BUNDLE (default models/default),
# TRAIN_SEEDS, FRAMES, STRIDE, DEVICE, DATA_WORKERS, JOBS (heads trained side by side), SYNTH_JOBS,
# PRETRAIN_MIN, PRETRAIN_BATCH, PRETRAIN_STEPS, ENCODER (an encoder folder to reuse instead of
# pretraining one), FINETUNE_MIN, BATCH_FRAMES, CONTINUE_SEEDS (none by default; v3 used 49-84) and
# CONTINUE_MIN, HARD_PAIR_MIN (with CONTINUE_SEEDS: the v5 stage; v5 used 20), HARD_PAIR_MIN2 (with
# HARD_PAIR_MIN: the v7 stage after it; v7 used 40), HARD_HEAD_MIN (24), CLS_HEAD_MIN (with
# HARD_PAIR_MIN2: the v8 stage; v8 used 24), HARD_PAIR_MIN3 (with CLS_HEAD_MIN: the v9 stage; v9 used
# 35), HARD_PAIR_MIN4 (with HARD_PAIR_MIN3: the v10 stage; v10 used 35), MORE_SEEDS_MIN (with
# HARD_PAIR_MIN4: the v11 stage; v11 used 24) and MORE_SEEDS (85-156), MORE_SEEDS_MIN2 (with
# MORE_SEEDS_MIN: the v12 stage; v12 used 24) and MORE_SEEDS2 (157-228), GPU_HARD_PAIR_MIN (with
# MORE_SEEDS_MIN2: the v13 stage, whose encoder round runs on CUDA whatever DEVICE says; v13 used
# 6.5), DECAY_STEPS (with GPU_HARD_PAIR_MIN: the v14 stage; v14 used 1500), MORE_SEEDS3 (with DECAY_STEPS:
# the v15 stage, which adds these seeds and runs the decay round again; v15 used 229-300), MORE_SEEDS4
# (with MORE_SEEDS3: the v16 stage, the same with these seeds; v16 used 301-372), MORE_SEEDS5 (with
# MORE_SEEDS4: the v17 stage, the same again; v17 used 373-500), MORE_SEEDS6 (with MORE_SEEDS5: the
# v18 stage; v18 used 509-700, past the calibration seeds), PART_VIEW_SEEDS (the v19 stage: a part-view
# head; v19 used 49-120), PART_VIEW_STEPS2 (with PART_VIEW_SEEDS: the v20 stage, that head trained on; v20
# used 1200), PART_READOUT (any value, with PART_VIEW_SEEDS: the v21 stage, a linear readout of the part
# view beside the part head), CALIB_SEEDS (501-508), PART_CALIB_SEEDS (v19 to v21: 2001-2012),
# SKIP_EVAL.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
RUNS=${RUNS:-runs}
BUNDLE=${BUNDLE:-models/default}
TRAIN_SEEDS=${TRAIN_SEEDS:-1 2 3 4 5 6}
FRAMES=${FRAMES:-160}
STRIDE=${STRIDE:-2}
DEVICE=${DEVICE:-cpu}
DATA_WORKERS=${DATA_WORKERS:-1}
JOBS=${JOBS:-1}
SYNTH_JOBS=${SYNTH_JOBS:-$JOBS}
PRETRAIN_MIN=${PRETRAIN_MIN:-26}
PRETRAIN_BATCH=${PRETRAIN_BATCH:-128}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-20000}
FINETUNE_MIN=${FINETUNE_MIN:-30}
CONTINUE_SEEDS=${CONTINUE_SEEDS:-}
CONTINUE_MIN=${CONTINUE_MIN:-20}
HARD_PAIR_MIN=${HARD_PAIR_MIN:-}
HARD_PAIR_MIN2=${HARD_PAIR_MIN2:-}
HARD_HEAD_MIN=${HARD_HEAD_MIN:-24}
CLS_HEAD_MIN=${CLS_HEAD_MIN:-}
HARD_PAIR_MIN3=${HARD_PAIR_MIN3:-}
HARD_PAIR_MIN4=${HARD_PAIR_MIN4:-}
MORE_SEEDS_MIN=${MORE_SEEDS_MIN:-}
MORE_SEEDS=${MORE_SEEDS:-$(seq -s' ' 85 156)}
MORE_SEEDS_MIN2=${MORE_SEEDS_MIN2:-}
MORE_SEEDS2=${MORE_SEEDS2:-$(seq -s' ' 157 228)}
MORE_SEEDS3=${MORE_SEEDS3:-}
MORE_SEEDS4=${MORE_SEEDS4:-}
MORE_SEEDS5=${MORE_SEEDS5:-}
MORE_SEEDS6=${MORE_SEEDS6:-}
GPU_HARD_PAIR_MIN=${GPU_HARD_PAIR_MIN:-}
DECAY_STEPS=${DECAY_STEPS:-}
CALIB_SEEDS=${CALIB_SEEDS:-501 502 503 504 505 506 507 508}
BATCH_FRAMES=${BATCH_FRAMES:-32}
THREADS=$([ "$DEVICE" = cpu ] && echo 2 || echo 1)
export HF_HUB_OFFLINE=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
patchsight() { "$PY" -m patchsight.cli "$@"; }
mkdir -p "$RUNS/data" "$RUNS/ablations"
ablations="$RUNS/ablations"  # the ablations the evaluation compares: v2's, or the last stage's (v8 to v18) that ran

# Runs "$@" in the background, at most JOBS at a time; wait_all waits for the rest.
running=0 failed=0
limited() {
  if [ "$running" -ge "$JOBS" ]; then wait -n || failed=1; running=$((running - 1)); fi
  "$@" &
  running=$((running + 1))
}
wait_all() {
  while [ "$running" -gt 0 ]; do wait -n || failed=1; running=$((running - 1)); done
  return "$failed"
}

synth_seed() {  # $1 kind (train|heldout), $2 seed, $3 frames, $4 defect rate
  local dir="$RUNS/data/$1-s$2"
  [ -f "$dir/.done" ] && return 0
  patchsight synth --out "$dir" --lines 3 --cameras 2 --frames "$3" --seed "$2" --defect-rate "$4" >/dev/null
  touch "$dir/.done"
}

# Training recordings use seeds the evaluation never sees (it uses 1001, 1002 and pairs from 9001).
# They render while the encoder pretrains, which needs none of them.
(
  JOBS=$SYNTH_JOBS
  for seed in $TRAIN_SEEDS; do limited synth_seed train "$seed" "$FRAMES" 0.6; done
  wait_all
) &
synth_pid=$!
ENCODER=${ENCODER:-}
if [ -z "$ENCODER" ]; then
  ENCODER=$RUNS/encoder
  patchsight model pretrain-encoder --out "$ENCODER" --time-limit-min "$PRETRAIN_MIN" --max-steps "$PRETRAIN_STEPS" \
    --batch-size "$PRETRAIN_BATCH" --lr 8e-4 --seed 0 --device "$DEVICE" --data-workers "$DATA_WORKERS" --threads "$THREADS"
fi
wait "$synth_pid"

data=()
for seed in $TRAIN_SEEDS; do data+=(--data "$RUNS/data/train-s$seed"); done
head_args=(--encoder "$ENCODER" "${data[@]}" --frame-stride "$STRIDE" --cache "$RUNS/cache" --seed 0
  --batch-frames "$BATCH_FRAMES" --lr 1e-3 --decoder-width 192 --decoder-layers 3 --eval-every 50 --patience 20
  --max-steps 100000 --threads "$THREADS" --time-limit-min "$FINETUNE_MIN" --device "$DEVICE")
train_head() {  # $1 variant: the shipped head (full) or an ablation
  local log="$RUNS/finetune-$1.log"
  if [ "$1" = full ]; then
    patchsight model finetune "${head_args[@]}" --out "$BUNDLE" --model-id patchsight-compact-v2 >"$log" 2>&1
  else
    # an ablation is meant to be weaker: it is kept even when validation puts it below the probe (--keep-anyway)
    patchsight model finetune "${head_args[@]}" --variant "$1" --head-only --keep-anyway --out "$RUNS/ablations/$1" \
      >"$log" 2>&1
  fi || { echo "finetune $1 failed:" >&2; tail -20 "$log" >&2; return 1; }
  echo "$1: $(tail -2 "$log" | head -1)"
}
# The shipped head and its three ablations train side by side when JOBS allows (a GPU has room for all).
for variant in full cls_only no_position question_blind; do limited train_head "$variant"; done
wait_all

# v3: the head trained further, from the bundle just written, on seeds it has not seen.
if [ -n "$CONTINUE_SEEDS" ]; then
  more=()  # the --data arguments of every head round from v3 on
  add_train_seeds() {  # seeds: rendered (160 frames each), then added to `more`
    local seed
    for seed in "$@"; do limited synth_seed train "$seed" 160 0.6; done
    wait_all
    for seed in "$@"; do more+=(--data "$RUNS/data/train-s$seed"); done
  }
  # the recipe every head round from v3 on shares, ablations included
  recipe=(--frame-stride 2 --cache "$RUNS/cache" --seed 0 --batch-frames 32 --lr 3e-4 --eval-every 50 --patience 20
    --device "$DEVICE")
  add_train_seeds $CONTINUE_SEEDS
  rm -rf "$RUNS/continued"
  patchsight model finetune --encoder "$BUNDLE" --init-head "${more[@]}" "${recipe[@]}" --max-steps 100000 \
    --threads "$THREADS" --time-limit-min "$CONTINUE_MIN" --out "$RUNS/continued" --model-id patchsight-compact-v3 \
    >"$RUNS/finetune-continued.log" 2>&1 || { tail -20 "$RUNS/finetune-continued.log" >&2; exit 1; }
  rm -rf "$BUNDLE" && mv "$RUNS/continued" "$BUNDLE"

  # v5 and v7: the bundle's encoder pretrained further with hard pairs (each part with a surface
  # defect next to its defect-free twin, captioned without the defect), then its head trained on,
  # on that encoder; v7 is a second such round from v5.
  head_round() {  # minutes, model id: the bundle's head trained on, on $RUNS/encoder-hard and the seeds in `more`
    rm -rf "$RUNS/hard"
    patchsight model finetune --encoder "$RUNS/encoder-hard" --init-head-from "$BUNDLE" "${more[@]}" "${recipe[@]}" \
      --max-steps 100000 --threads "$THREADS" --time-limit-min "$1" --out "$RUNS/hard" \
      --model-id "$2" >"$RUNS/finetune-hard.log" 2>&1 || { tail -20 "$RUNS/finetune-hard.log" >&2; exit 1; }
    rm -rf "$BUNDLE" && mv "$RUNS/hard" "$BUNDLE"
  }
  hard_pair_round() {  # minutes, seed, model id (PAIR_ON_GPU set: the encoder trains on a CUDA GPU)
    local where=(--batch-size "$PRETRAIN_BATCH" --device "$DEVICE" --data-workers "$DATA_WORKERS" --threads "$THREADS")
    # v13's round: the batch and rendering processes that kept one H200 busy (1800 images/s)
    [ -z "${PAIR_ON_GPU:-}" ] || where=(--batch-size 512 --device cuda --data-workers 14 --threads 1)
    rm -rf "$RUNS/encoder-hard"
    patchsight model pretrain-encoder --out "$RUNS/encoder-hard" --init-from "$BUNDLE" --hard-pair-rate 1.0 \
      --lr 3e-4 --time-limit-min "$1" --max-steps 100000 --seed "$2" "${where[@]}"
    head_round "$HARD_HEAD_MIN" "$3"
  }
  if [ -n "$HARD_PAIR_MIN" ]; then
    hard_pair_round "$HARD_PAIR_MIN" 5 patchsight-compact-v5
    if [ -n "$HARD_PAIR_MIN2" ]; then hard_pair_round "$HARD_PAIR_MIN2" 7 patchsight-compact-v7; fi
  fi
  # v8: the head, from v7's, given the CLS token of the layer it reads before the patch tokens;
  # that token holds the surface defects the hard pairs taught (scripts/probe_features.py).
  if [ -n "$HARD_PAIR_MIN" ] && [ -n "$HARD_PAIR_MIN2" ] && [ -n "$CLS_HEAD_MIN" ]; then
    v8_args=(--encoder "$RUNS/encoder-hard" --init-head-from "$BUNDLE" "${more[@]}" --image-tokens cls_then_patch
      "${recipe[@]}")
    rm -rf "$RUNS/cls-patch"
    patchsight model finetune "${v8_args[@]}" --max-steps 100000 --threads "$THREADS" --time-limit-min "$CLS_HEAD_MIN" \
      --out "$RUNS/cls-patch" --model-id patchsight-compact-v8 >"$RUNS/finetune-cls-patch.log" 2>&1 \
      || { tail -20 "$RUNS/finetune-cls-patch.log" >&2; exit 1; }
    # Its ablations start where it started (v7's head), with its recipe and at most its steps.
    trained_steps() {  # $1 bundle
      "$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['provenance']['finetune']['steps'])" "$1/bundle.json"
    }
    ablate() {  # $1 steps, $2 folder, $3 variant, then the full head's finetune arguments
      local steps=$1 dir=$2 variant=$3
      shift 3
      patchsight model finetune "$@" --variant "$variant" --head-only --keep-anyway --max-steps "$steps" --threads 1 \
        --time-limit-min 600 --out "$dir/$variant" >"$dir-$variant.log" 2>&1 \
        || { tail -20 "$dir-$variant.log" >&2; return 1; }
    }
    v8_steps=$(trained_steps "$RUNS/cls-patch")
    rm -rf "$RUNS/ablations-v8"
    for variant in cls_only no_position question_blind; do
      limited ablate "$v8_steps" "$RUNS/ablations-v8" "$variant" "${v8_args[@]}"
    done
    wait_all
    ablations="$RUNS/ablations-v8"
    rm -rf "$BUNDLE" && mv "$RUNS/cls-patch" "$BUNDLE"

    # v9 and v10: more hard-pair rounds under v8's head, which keeps reading CLS + patches; v11: the
    # same encoder, its head trained on with twice as many new parts (it had over-fitted the first
    # seeds' parts); v12: 72 seeds more; v13: a hard-pair round on a GPU. Each round's four ablations
    # start where it started (the previous head), with its recipe and its steps.
    ablated_round() {  # version, then the round that trains it and the round's arguments but the model id
      local version=$1 prev="$RUNS/v$(($1 - 1))" steps variant
      shift
      rm -rf "$prev" && cp -r "$BUNDLE" "$prev"
      "$@" "patchsight-compact-v$version"
      local args=(--encoder "$RUNS/encoder-hard" --init-head-from "$prev" "${more[@]}" "${recipe[@]}")
      steps=$(trained_steps "$BUNDLE")
      rm -rf "$RUNS/ablations-v$version"
      for variant in cls_only no_position question_blind no_position_at_all; do
        limited ablate "$steps" "$RUNS/ablations-v$version" "$variant" "${args[@]}"
      done
      wait_all
      ablations="$RUNS/ablations-v$version"
    }
    # v14: a decay phase. The head, on the same encoder and seeds, trains `steps` more steps with
    # the rate annealed from the recipe's to zero; each ablation continues its own head of the
    # round before the same way, so that every variant has had the same training (start: own).
    # v15 ran it again on more seeds, on a machine that no longer had v14's ablation heads: its
    # ablations start from v14's full head, as those of v9 to v13 start from the head before (full).
    decay_round() {  # version, steps, where each ablation starts: own (its own head of the round before) or full
      local version=$1 steps=$2 start=$3 prev="$RUNS/v$(($1 - 1))" variant from
      rm -rf "$prev" && cp -r "$BUNDLE" "$prev"
      rm -rf "$RUNS/decayed"
      patchsight model finetune --encoder "$RUNS/encoder-hard" --init-head-from "$BUNDLE" "${more[@]}" "${recipe[@]}" \
        --lr-decay cosine --max-steps "$steps" --threads "$THREADS" --time-limit-min 600 --out "$RUNS/decayed" \
        --model-id "patchsight-compact-v$version" >"$RUNS/finetune-decayed.log" 2>&1 \
        || { tail -20 "$RUNS/finetune-decayed.log" >&2; exit 1; }
      rm -rf "$BUNDLE" && mv "$RUNS/decayed" "$BUNDLE"
      rm -rf "$RUNS/ablations-v$version"
      for variant in cls_only no_position question_blind no_position_at_all; do
        from="$ablations/$variant"
        [ "$start" = own ] || from=$prev
        limited ablate "$steps" "$RUNS/ablations-v$version" "$variant" --encoder "$RUNS/encoder-hard" \
          --init-head-from "$from" "${more[@]}" "${recipe[@]}" --lr-decay cosine
      done
      wait_all
      ablations="$RUNS/ablations-v$version"
    }
    more_seeds_round() {  # seeds (one word), minutes, model id
      add_train_seeds $1
      head_round "$2" "$3"
    }
    if [ -n "$HARD_PAIR_MIN3" ]; then
      ablated_round 9 hard_pair_round "$HARD_PAIR_MIN3" 9
      if [ -n "$HARD_PAIR_MIN4" ]; then
        ablated_round 10 hard_pair_round "$HARD_PAIR_MIN4" 10  # v10: the same again
        if [ -n "$MORE_SEEDS_MIN" ]; then
          ablated_round 11 more_seeds_round "$MORE_SEEDS" "$MORE_SEEDS_MIN"
          if [ -n "$MORE_SEEDS_MIN2" ]; then
            ablated_round 12 more_seeds_round "$MORE_SEEDS2" "$MORE_SEEDS_MIN2"
            if [ -n "$GPU_HARD_PAIR_MIN" ]; then
              PAIR_ON_GPU=1 ablated_round 13 hard_pair_round "$GPU_HARD_PAIR_MIN" 12
              if [ -n "$DECAY_STEPS" ]; then
                decay_round 14 "$DECAY_STEPS" own
                # v15 to v18: more seeds and the same decay round again, over all the seeds;
                # each stage runs only after the one before it
                version=15
                for seeds in "$MORE_SEEDS3" "$MORE_SEEDS4" "$MORE_SEEDS5" "$MORE_SEEDS6"; do
                  [ -n "$seeds" ] || break
                  add_train_seeds $seeds
                  decay_round "$version" "$DECAY_STEPS" full
                  version=$((version + 1))
                done
              fi
            fi
          fi
        fi
      fi
    fi
  fi
fi

# v19: a second head that reads the part view (the part cut out around the tracker's box), trained
# from the whole-frame head on the PART_VIEW_SEEDS (v19 used 49-120) with everything else kept.
if [ -n "${PART_VIEW_SEEDS:-}" ]; then
  part_data=()
  for seed in $PART_VIEW_SEEDS; do limited synth_seed train "$seed" 160 0.6; part_data+=(--data "$RUNS/data/train-s$seed"); done
  wait_all
  patchsight model finetune --encoder "$BUNDLE" --view part --margin 0.06 --init-head "${part_data[@]}" \
    --cache "$RUNS/cache" --lr 2e-4 --lr-decay cosine --max-steps 400 --batch-frames 32 --eval-every 50 \
    --patience 20 --time-limit-min 30 --seed 0 --threads "$THREADS" --model-id patchsight-compact-v19 \
    --out "$RUNS/part-view" >"$RUNS/finetune-part-view.log" 2>&1
  rm -rf "$BUNDLE" && cp -r "$RUNS/part-view" "$BUNDLE"
  # v20: the part head trained on from v19's, on the same seeds and validation split (--seed 0), for
  # PART_VIEW_STEPS2 more steps (v20 used 1200), keeping the step with the best validation AUROC.
  if [ -n "${PART_VIEW_STEPS2:-}" ]; then
    patchsight model finetune --encoder "$BUNDLE" --view part --margin 0.06 "${part_data[@]}" \
      --cache "$RUNS/cache" --lr 2e-4 --lr-decay cosine --max-steps "$PART_VIEW_STEPS2" --batch-frames 32 \
      --select-by auroc --val-frames 1500 --eval-every 150 --patience 20 --time-limit-min 100 --seed 0 \
      --threads "$THREADS" --model-id patchsight-compact-v20 --out "$RUNS/part-view2" >"$RUNS/finetune-part-view2.log" 2>&1
    rm -rf "$BUNDLE" && cp -r "$RUNS/part-view2" "$BUNDLE"
  fi
  # v21: a linear readout of the part view's patch tokens beside the part head, fitted on the same
  # seeds (seconds from the cached part views); calibrate below chooses each question's share of it.
  if [ -n "${PART_READOUT:-}" ]; then
    patchsight model fit-readout "$BUNDLE" "${part_data[@]}" --cache "$RUNS/cache" --epochs 4 --seed 0 \
      --threads "$THREADS" --model-id patchsight-compact-v21 >"$RUNS/fit-readout.log" 2>&1
  fi
fi

# Thresholds from seeds that neither training nor evaluation uses: at most 5% of clean frames flagged,
# and part thresholds that flag at most 2% of the good parts (PART_CALIB_SEEDS, v19: 2001-2012, add
# good parts at the line's defect rate so that the budget rests on more of them).
for seed in $CALIB_SEEDS; do limited synth_seed calib "$seed" 160 0.6; done
for seed in ${PART_CALIB_SEEDS:-}; do limited synth_seed calib "$seed" 160 0.25; done
wait_all
calib=()
for seed in $CALIB_SEEDS ${PART_CALIB_SEEDS:-}; do calib+=(--data "$RUNS/data/calib-s$seed"); done
patchsight model calibrate "$BUNDLE" "${calib[@]}" --max-fpr 0.05 --max-false-alarm-rate 0.02 --aggregate mean \
  --cache "$RUNS/cache" --threads "$THREADS"

[ -n "${SKIP_EVAL:-}" ] && exit 0
synth_seed heldout 1001 150 0.25
synth_seed heldout 1002 150 0.25
patchsight model eval "$BUNDLE" --data "$RUNS/data/heldout-s1001" --data "$RUNS/data/heldout-s1002" \
  --ablations "$ablations" --out "$RUNS/eval-default" --pairs 40 --pair-seed 9001
