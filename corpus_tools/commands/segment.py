"""`corpus segment`: parse options into ``SegmentArgs``, run ``run_segment``, print the result."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from corpus_tools.ingest import Backend
from corpus_tools.manifests import WorkDir
from corpus_tools.progress import stdout, user_errors
from corpus_tools.segment.backends import SegmentConfig
from corpus_tools.segment.run import DEFAULT_METHODS, AsrBackend, Device, SegmentArgs, SegmentResult, run_segment
from corpus_tools.segment.runner import METHODS

METHOD_HELP = f"{' | '.join(METHODS)} | all (comma-separated or repeated)"
C, D = SegmentConfig, SegmentArgs  # the defaults live on the config and args dataclasses


def segment(
    workdir: Annotated[Path, typer.Argument(help="Work directory made by `corpus ingest`.")],
    method: Annotated[list[str], typer.Option("--method", "-m", help=METHOD_HELP)] = list(DEFAULT_METHODS),
    whisper_model: Annotated[str, typer.Option(help="Whisper name (large-v2, base, ...) or local path "
                                               "(CTranslate2 dir, or .pt for openai-whisper).")] = C.whisper_model,
    asr_backend: Annotated[AsrBackend, typer.Option(metavar="NAME", help="Backend of the w-* methods: faster-whisper | "
                                                    "openai-whisper. wx-* always use WhisperX (faster-whisper).")
                           ] = AsrBackend(C.asr_backend),
    language: Annotated[str, typer.Option(help="Language code for ASR, alignment and the phrase list.")] = C.language,
    align_model: Annotated[Optional[str], typer.Option(help="Word aligner of wx-align: a wav2vec2 CTC model (name or "
                                                       "local dir), or 'whisper': the Whisper model that "
                                                       "transcribed aligns its own words (any language, no extra "
                                                       "model). Default: the language's CTC aligner (nl: "
                                                       "jonatasgrosman/wav2vec2-large-xlsr-53-dutch) when it is "
                                                       "here or can be downloaded, else whisper.")] = C.align_model,
    diarize_model: Annotated[Optional[str], typer.Option(help="Diarization pipeline (name or local dir).")
                             ] = C.diarize_model,
    vad_model: Annotated[Optional[str], typer.Option(help="pyannote VAD/segmentation checkpoint (name or path); "
                                                     "default: the one bundled with WhisperX.")] = C.vad_model,
    models_dir: Annotated[Optional[Path], typer.Option(help="Models folder searched first for model names "
                                                       "(default: $CORPUS_MODELS).")] = None,
    device: Annotated[Device, typer.Option(help="Where the models run.")] = Device(C.device),
    batch_size: Annotated[int, typer.Option(help="WhisperX ASR batch size.")] = C.batch_size,
    compute_type: Annotated[str, typer.Option(help="CTranslate2 compute type: default (float16 on GPU, int8 on CPU), "
                                              "float16, int8, float32.")] = C.compute_type,
    beam_size: Annotated[int, typer.Option(help="Beam size for Whisper decoding.")] = C.beam_size,
    word_timestamps: Annotated[bool, typer.Option(help="w-*: cut at the first and last word's time from "
                                                  "Whisper's word alignment (default), not at its timestamp "
                                                  "tokens, which often start a segment inside music or "
                                                  "silence.")] = C.word_timestamps,
    phrase_list: Annotated[Optional[list[Path]], typer.Option(metavar="FILE", help="Phrase filter file added to the language's "
                                                              "default list manifests/phrases/<language>.txt "
                                                              "(repeatable; one phrase per line).")] = None,
    default_phrases: Annotated[bool, typer.Option("--default-phrases/--no-default-phrases",
                                                  help="Filter the language's default phrases too; "
                                                  "--no-default-phrases leaves only the --phrase-list files.")
                               ] = D.default_phrases,
    backend: Annotated[Backend, typer.Option(help="Where the workers run.")] = Backend(D.backend),
    workers: Annotated[int, typer.Option(help="Worker processes (local) or actors (ray), each holding its own "
                                         "models; 0 = one per GPU. Ray uses one actor per GPU when it has GPUs.")
                       ] = D.workers,
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address for --backend ray.")] = D.ray_address,
    num_shards: Annotated[int, typer.Option(help="Split recordings into N parts (e.g. a SLURM array).")] = D.num_shards,
    shard_index: Annotated[int, typer.Option(help="Which part this process runs (0-based).")] = D.shard_index,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Decode recordings that failed in an "
                                               "earlier run again (a failure is remembered otherwise, "
                                               "so reruns stay cheap).")] = D.retry_failed,
) -> None:
    """Segment every ok recording and write WORKDIR/segments/<method>.parquet per method.

    Model outputs are cached per recording and stage, so all w-* methods come from one
    Whisper pass and all wx-* methods from one WhisperX pass; a rerun skips finished
    recordings (a crash loses at most the recordings in flight). Each stage's cache is keyed
    on the models it resolves to (their files, not just the option given), so installing
    another model recomputes exactly the stages that use it; WORKDIR/cache/<stage>-*/settings.json
    says which models made a cache.

    Methods cut at word times (w-pp-*, wx-align, wx-diar*) keep only words that lie in
    speech (pyannote VAD, with a 0.2 s collar); a segment left without words is dropped
    (rule off-speech in `corpus stats`). Per recording, the speaker turns are written as
    RTTM to WORKDIR/segments/rttm/ and the word alignment as CTM to WORKDIR/segments/ctm/.
    """
    config = SegmentConfig(
        whisper_model=whisper_model, asr_backend=asr_backend.value, language=language, align_model=align_model,
        diarize_model=diarize_model, vad_model=vad_model, device=device.value, compute_type=compute_type,
        batch_size=batch_size, beam_size=beam_size, word_timestamps=word_timestamps,
        models_dir=str(models_dir) if models_dir else None)
    args = SegmentArgs(workdir=workdir, methods=method, config=config, phrase_lists=list(phrase_list or []),
                       default_phrases=default_phrases, backend=backend.value, workers=workers,
                       ray_address=ray_address, num_shards=num_shards, shard_index=shard_index,
                       retry_failed=retry_failed)
    with user_errors():
        result = run_segment(args)
    print_result(result, workdir)


def print_result(result: SegmentResult, workdir: Path) -> None:
    for line in result.failed:
        stdout.print(f"  failed {line}")
    if result.part:
        shard_index, num_shards = result.part
        stdout.print(f"part {shard_index}/{num_shards}: stages cached for {result.recordings} recordings; "
                     f"run `corpus merge {workdir}` (or segment without --num-shards) to write manifests")
        return
    for out in result.outputs:
        print_method(out.method, out.segments, out.kept_seconds, out.path)
    print_standard_outputs(result.standard_outputs, result.workdir)
    rtf = (f", {result.audio_seconds / result.model_seconds:.1f}× real time" if result.model_seconds > 0
           else " (all stages cached)")
    stdout.print(f"segmented {result.recordings} recordings ({result.audio_seconds / 3600:.2f} h) with "
                 f"{len(result.methods)} method(s) in {result.model_seconds:.1f} s of model time{rtf}")


def print_method(method: str, segments: int, kept_seconds: float, path: Path) -> None:
    """One line per written manifest (also ``corpus merge``'s)."""
    stdout.print(f"  {method:11s} {segments:6d} segments  {kept_seconds / 3600:8.3f} h kept  → {path}")


def print_standard_outputs(written: dict[str, int], wd: WorkDir) -> None:
    """Say where the RTTM / CTM files went (``standard_outputs.write_standard_outputs``)."""
    for fmt, folder, what in (("rttm", wd.rttm_dir, "speaker turns"), ("ctm", wd.ctm_dir, "word alignment")):
        if written.get(fmt):
            stdout.print(f"  {what} ({fmt.upper()}, {written[fmt]} recordings) → {folder}/")


def register(app: typer.Typer) -> None:
    app.command("segment")(segment)
