"""`corpus segment`: cut recordings into utterances with one of ten methods (SPEC §2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

METHOD_HELP = ("seq | sad | w-raw | w-pp-1s | w-pp-3s | wx-asr | wx-align | wx-diar | wx-diar-1s | "
               "wx-diar-3s | all (comma-separated or repeated)")


def segment(
    workdir: Annotated[Path, typer.Argument(help="Work directory made by `corpus ingest`.")],
    method: Annotated[list[str], typer.Option("--method", "-m", help=METHOD_HELP)] = ["wx-diar-3s"],
    whisper_model: Annotated[str, typer.Option(help="Whisper name (large-v2, base, ...) or local path "
                                               "(CTranslate2 dir, or .pt for openai-whisper).")] = "large-v2",
    asr_backend: Annotated[str, typer.Option(help="Backend of the w-* methods: faster-whisper | openai-whisper. "
                                             "wx-* always use WhisperX (faster-whisper).")] = "faster-whisper",
    language: Annotated[str, typer.Option(help="Language code for ASR, alignment and the phrase list.")] = "nl",
    align_model: Annotated[Optional[str], typer.Option(help="Word aligner of wx-align: a wav2vec2 CTC model (name or "
                                                       "local dir), or 'whisper': the Whisper model that "
                                                       "transcribed aligns its own words (any language, no extra "
                                                       "model). Default: the language's CTC aligner (nl: "
                                                       "jonatasgrosman/wav2vec2-large-xlsr-53-dutch) when it is "
                                                       "here or can be downloaded, else whisper.")] = None,
    diarize_model: Annotated[Optional[str], typer.Option(help="Diarization pipeline (name or local dir).")] = None,
    vad_model: Annotated[Optional[str], typer.Option(help="pyannote VAD/segmentation checkpoint (name or path); "
                                                     "default: the one bundled with WhisperX.")] = None,
    models_dir: Annotated[Optional[Path], typer.Option(help="Models folder searched first for model names "
                                                       "(default: $CORPUS_MODELS).")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="WhisperX ASR batch size.")] = 16,
    compute_type: Annotated[str, typer.Option(help="CTranslate2 compute type: default (float16 on GPU, int8 on CPU), "
                                              "float16, int8, float32.")] = "default",
    beam_size: Annotated[int, typer.Option(help="Beam size for Whisper decoding.")] = 5,
    word_timestamps: Annotated[bool, typer.Option(help="w-*: cut at the first and last word's time from "
                                                  "Whisper's word alignment (default), not at its timestamp "
                                                  "tokens, which often start a segment inside music or "
                                                  "silence.")] = True,
    phrase_list: Annotated[Optional[list[Path]], typer.Option(metavar="FILE", help="Phrase filter file added to the language's "
                                                              "default list manifests/phrases/<language>.txt "
                                                              "(repeatable; one phrase per line).")] = None,
    default_phrases: Annotated[bool, typer.Option("--default-phrases/--no-default-phrases",
                                                  help="Filter the language's default phrases too; "
                                                  "--no-default-phrases leaves only the --phrase-list files.")] = True,
    backend: Annotated[str, typer.Option(help="local | ray.")] = "local",
    workers: Annotated[int, typer.Option(help="Worker processes (local) or actors (ray), each holding its own "
                                         "models; 0 = one per GPU. Ray uses one actor per GPU when it has GPUs.")] = 1,
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address for --backend ray.")] = None,
    num_shards: Annotated[int, typer.Option(help="Split recordings into N parts (e.g. a SLURM array).")] = 1,
    shard_index: Annotated[int, typer.Option(help="Which part this process runs (0-based).")] = 0,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Decode recordings that failed in an "
                                               "earlier run again (a failure is remembered otherwise, "
                                               "so reruns stay cheap).")] = False,
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
    import os

    from corpus_tools.manifests import WorkDir
    from corpus_tools.progress import fail, progress_bar, stdout, user_errors
    from corpus_tools.segment import postprocess as pp
    from corpus_tools.segment import runner
    from corpus_tools.segment.backends import ModelSet, SegmentConfig
    from corpus_tools.segment.standard_outputs import write_standard_outputs

    with user_errors():
        methods = runner.parse_methods(method)
        if not methods:
            raise fail("no method given")
        if asr_backend not in ("faster-whisper", "openai-whisper"):
            raise fail(f"--asr-backend must be faster-whisper or openai-whisper, not {asr_backend!r}")
        if backend not in ("local", "ray"):
            raise fail(f"--backend must be local or ray, not {backend!r}")
        if not (0 <= shard_index < num_shards):
            raise fail("--shard-index must be in [0, --num-shards)")
        phrase_files = pp.phrase_files(language, phrase_list, default=default_phrases)
        phrases = pp.load_phrases(language, phrase_files, default=False)
        wd = WorkDir(workdir)
        if not wd.recordings.exists():
            raise fail(f"{wd.recordings} not found: run `corpus ingest ... -o {workdir}` first")
        cfg = SegmentConfig(
            whisper_model=whisper_model, asr_backend=asr_backend, language=language, align_model=align_model,
            diarize_model=diarize_model, vad_model=vad_model, device=device, compute_type=compute_type,
            batch_size=batch_size, beam_size=beam_size, word_timestamps=word_timestamps,
            models_dir=str(models_dir) if models_dir else os.environ.get("CORPUS_MODELS"))
        recs = runner.ok_recordings(wd)
        mine = [r for i, r in enumerate(recs) if i % num_shards == shard_index]
        stages = runner.stages_for(methods)
        models = ModelSet(cfg) if stages else None  # resolves what it will load; loads nothing yet
        keys = models.stage_keys(stages) if models else {}
        cache = runner.StageCache(wd, keys)
        if retry_failed:
            for r in mine:
                cache.forget_failure(r["recording_id"])
        total_audio = sum(r["duration"] for r in mine)
        t_model = 0.0
        if stages and mine:
            if backend == "ray" or workers != 1:
                from corpus_tools.scale import run_segment_parallel

                t_model = run_segment_parallel(mine, stages, wd, cfg, backend=backend, workers=workers,
                                               address=ray_address, stage_keys=keys)
            else:
                with progress_bar() as bar:
                    task = bar.add_task("segment", total=len(mine), info="")
                    audio_done = 0.0
                    for rec in mine:
                        res = runner.process_recording(rec, stages, cache, models)
                        t_model += res["seconds"]
                        if res["computed"]:
                            audio_done += rec["duration"]
                        rtf = audio_done / t_model if t_model > 0 else 0.0
                        bar.update(task, advance=1, info=f"{rtf:.1f}× real time" if rtf else "cached")
                        if res.get("error"):
                            stdout.print(f"  failed {rec['recording_id']}: {res['error']}")
        if num_shards > 1:
            from corpus_tools.scale import record_segment_part

            record_segment_part(wd, shard_index, num_shards, methods, cfg,
                                [r["recording_id"] for r in mine], [str(f) for f in phrase_files],
                                stage_keys=keys)
            stdout.print(f"part {shard_index}/{num_shards}: stages cached for {len(mine)} recordings; "
                         f"run `corpus merge {workdir}` (or segment without --num-shards) to write manifests")
            return
        for m in methods:
            df, drops = runner.assemble(m, recs, cache, phrases, language)
            drops["phrase_lists"] = [str(f) for f in phrase_files]
            runner.write_method(wd, m, df, drops, cfg)
            stdout.print(f"  {m:11s} {df.height:6d} segments  {drops['kept_seconds'] / 3600:8.3f} h kept  "
                         f"→ {wd.segments(m)}")
        print_standard_outputs(write_standard_outputs(wd, recs, cache, stages), wd)
    rtf = f", {total_audio / t_model:.1f}× real time" if t_model > 0 else " (all stages cached)"
    stdout.print(f"segmented {len(mine)} recordings ({total_audio / 3600:.2f} h) with {len(methods)} "
                 f"method(s) in {t_model:.1f} s of model time{rtf}")


def print_standard_outputs(written: dict[str, int], wd) -> None:
    """Say where the RTTM / CTM files went (``standard_outputs.write_standard_outputs``)."""
    from corpus_tools.progress import stdout

    for fmt, folder, what in (("rttm", wd.rttm_dir, "speaker turns"), ("ctm", wd.ctm_dir, "word alignment")):
        if written.get(fmt):
            stdout.print(f"  {what} ({fmt.upper()}, {written[fmt]} recordings) → {folder}/")


def register(app: typer.Typer) -> None:
    app.command("segment")(segment)
