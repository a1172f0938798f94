"""`corpus simulate`: write degraded LibriSpeech shards for the data-quality study."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from corpus_tools.progress import fail, progress_bar, stdout, user_errors
from corpus_tools.simulate import parse_condition, simulate_offline
from corpus_tools.splits import CHOICES

CONDITION_HELP = (
    "Condition: baseline | 1spk-concat | 2spk-concat | 2spk-mix-X | sub-noise-X | sub-music-X | "
    "mix-noise-X | mix-music-X | mix-instr-X | mix-vocal-X, X = integer percent 1..100 of each "
    "batch (thesis: 10, 33, 50). See manifests/simulation_conditions.yaml.")


def _check_condition(value: str) -> str:
    try:
        return parse_condition(value).name
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def simulate(
    condition: Annotated[str, typer.Argument(help=CONDITION_HELP, callback=_check_condition,
                                             show_default=False)],
    source: Annotated[Path, typer.Option("--source", "--librispeech",
                                         help="LibriSpeech segments manifest (`corpus import "
                                              "librispeech`), its shards (folder or glob), or "
                                              "the LibriSpeech folder itself.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the degraded shards.")],
    noise: Annotated[Optional[Path], typer.Option(
        "--noise", "--musan", help="MUSAN noise manifest or musan/ folder (sub-noise, "
                                   "mix-noise).")] = None,
    music: Annotated[Optional[Path], typer.Option(
        "--music", "--fma", help="FMA manifest or folder (sub-music, mix-music).")] = None,
    stems: Annotated[Optional[Path], typer.Option(help="`corpus stem` output folder (mix-instr, "
                                                  "mix-vocal).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random choice (same seed → identical "
                                      "shards).")] = 0,
    batch_seconds: Annotated[float, typer.Option(help="Batch budget in seconds, padding included, "
                                                 "as the trainer's --batch-seconds.")] = 150.0,
    bucket_buffer: Annotated[int, typer.Option(help="Duration batcher queue size (trainer: 50).")] = 50,
    max_span_seconds: Annotated[float, typer.Option(help="Longest − shortest utterance in a batch "
                                                    "(trainer: 10; 0 = no limit).")] = 10.0,
    shuffle: Annotated[bool, typer.Option(help="Shuffle the source (seeded) before batching, as "
                                          "training does.")] = True,
    shard_size: Annotated[int, typer.Option(help="Utterances per output shard.")] = 5000,
    audio_format: Annotated[str, typer.Option("--format", help="wav | flac.")] = "wav",
    max_utterance_seconds: Annotated[float, typer.Option(
        help="Longest utterance, as the trainer's --max-utterance-seconds: a concatenation is "
             "cut to min(this, batch seconds / rows in its batch).")] = 30.0,
    split: Annotated[str, typer.Option(
        help="Source rows to write by their split column: train (rows whose split is train or "
             "unknown), dev, test or all. Dev and test utterances are never degraded.")] = "train",
    val_output: Annotated[Optional[Path], typer.Option(
        "--val-output", help="Also write the source's dev rows, undegraded, as validation "
                             "shards in this folder (for --val-shards).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace shards a previous run left in "
                                            "--output (and --val-output).")] = False,
) -> None:
    """Degrade a LibriSpeech source batch by batch and write listenable WebDataset shards.

    Batches are formed like the trainer's (duration budget, priority queue); in each batch
    X % of the utterances (at least one) are mixed at an SNR uniform in [0, 15] dB or
    replaced, or every utterance gets a partner appended (concat). Each utterance's json
    says what was done (`simulation`: condition, partner or noise/music id, SNR, offsets);
    OUTPUT/simulation.parquet lists it all, OUTPUT/simulation.json sums the run up.
    The trainer applies the same code online with `trainer pretrain --simulate COND`.

    Only training rows are written by default: the source's dev and test utterances (its split column, as `corpus import` writes it) are left out and counted.
    """
    if split not in CHOICES:
        raise typer.BadParameter(f"use one of {', '.join(CHOICES)}", param_hint="--split")
    with user_errors():  # bad input (ValueError, missing files, FileExistsError) → one line
        if audio_format not in ("wav", "flac"):
            raise fail(f"--format must be wav or flac, not {audio_format!r}")
        if batch_seconds <= 0 or shard_size <= 0 or max_utterance_seconds <= 0:
            raise fail("--batch-seconds, --shard-size and --max-utterance-seconds must be positive")
        with progress_bar() as bar:
            task = bar.add_task(f"simulate {condition}", total=None, info="")
            done = {"s": 0.0}

            def on_batch(n: int, seconds: float) -> None:
                done["s"] += seconds
                bar.update(task, advance=n, info=f"{done['s'] / 3600:.2f} h")

            summary = simulate_offline(
                condition, source, output, noise=noise, music=music, stems=stems, seed=seed,
                batch_seconds=batch_seconds, bucket_buffer=bucket_buffer,
                max_span_seconds=max_span_seconds or None, shuffle=shuffle,
                shard_size=shard_size, audio_format=audio_format, overwrite=overwrite,
                on_batch=on_batch, split=split, val_output=val_output,
                max_utterance_seconds=max_utterance_seconds)
    if summary["left_out"]["message"]:
        stdout.print(summary["left_out"]["message"])
    stdout.print(
        f"{summary['condition']}: {summary['modified']}/{summary['utterances']} utterances modified "
        f"in {summary['batches']} batches, {summary['output_seconds'] / 3600:.3f} h written to "
        f"{len(summary['shards'])} shard(s) in {output}")
    if "val_output" in summary:
        v = summary["val_output"]
        stdout.print(f"validation: {v['utterances']} dev utterances, undegraded, in "
                     f"{len(v['shards'])} shard(s) in {v['path']}")


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)
