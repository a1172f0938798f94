"""``trainer evaluate``.

torch and the decoders are imported inside the command so that ``--help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from trainer.commands import common

EVALUATE_HELP = """Decode shard sets with a fine-tuned model and report WER/CER (jiwer).

Greedy letter decoding always; with --lm, also lexicon + n-gram LM beam search (torchaudio's
flashlight CTC decoder; beam 50, LM weight 2, word insertion 0 by default). Without --lexicon the
lexicon is built from the LM's unigrams (ARPA only). One summary row per --shards (named by its
folder, or NAME=PATH). Writes OUT/hypotheses.jsonl and OUT/summary.{md,csv,json}. Bad utterances
(audio that does not decode, empty, NaN samples, broken json) and truncated shards are skipped,
named on stderr and counted in the summary (bad_utterances, bad_shards); more than
--max-bad-fraction of them stops the evaluation.

  trainer evaluate --ckpt runs/ft10h --shards ls/test-clean --shards ls/test-other --lm 4-gram.arpa
"""


def register(app: typer.Typer) -> None:
    @app.command("evaluate", help=EVALUATE_HELP, no_args_is_help=True)
    def evaluate_command(
        ckpt: Path = typer.Option(..., "--ckpt", help="A fine-tuning checkpoint, or a run dir (its best.pt)."),
        shards: list[str] = typer.Option(..., "--shards", help="A shard set to score (repeatable; NAME=PATH to name it)."),
        lm: Optional[Path] = typer.Option(None, "--lm", help="n-gram LM (ARPA or KenLM binary) for word decoding."),
        lexicon: Optional[Path] = typer.Option(None, "--lexicon",
                                               help="Lexicon file (word<TAB>w o r d |); default: the ARPA unigrams."),
        out: Optional[Path] = typer.Option(None, "--out", "-o",
                                           help="Output folder (default: eval/ next to the checkpoint's run)."),
        beam_size: int = typer.Option(50, help="Beam size of the LM decoder."),
        lm_weight: float = typer.Option(2.0, help="LM weight."),
        word_score: float = typer.Option(0.0, help="Word insertion score."),
        batch_seconds: float = typer.Option(100.0, help="Seconds of audio per batch."),
        language: Optional[str] = typer.Option(None, help="Normalise references as en or nl (default: shard field)."),
        digits: str = typer.Option("spell", help="Numbers in references: spell or drop (as in training)."),
        device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 … (default cuda if available)."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
        max_bad_fraction: float = common.MAX_BAD_FRACTION,
        trust_checkpoint: bool = common.TRUST_CHECKPOINT,
    ) -> None:
        if not ckpt.exists():
            raise typer.BadParameter(f"{ckpt} does not exist", param_hint="--ckpt")
        for s in shards:
            path = s.split("=", 1)[1] if ("=" in s and not Path(s).exists()) else s
            common.check_shards(path, "--shards")
        if lm is not None and not lm.exists():
            raise typer.BadParameter(f"{lm} does not exist", param_hint="--lm")
        if lexicon is not None and not lexicon.exists():
            raise typer.BadParameter(f"{lexicon} does not exist", param_hint="--lexicon")
        if lexicon is not None and lm is None:
            raise typer.BadParameter("a lexicon is only used with --lm", param_hint="--lexicon")
        common.check_limits(max_bad_fraction)
        if digits not in ("spell", "drop"):
            raise typer.BadParameter("use spell or drop", param_hint="--digits")
        from trainer.ctc import resolve_ctc_checkpoint
        from trainer.decode import evaluate, summary_markdown

        try:
            path = resolve_ctc_checkpoint(ckpt)
        except FileNotFoundError as e:
            raise typer.BadParameter(str(e), param_hint="--ckpt")
        if out is None:
            run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
            out = run / "eval" / path.stem
        with common.run_errors():
            rows = evaluate(path, shards, lm=lm, lexicon=lexicon, out_dir=out, batch_seconds=batch_seconds,
                            beam_size=beam_size, lm_weight=lm_weight, word_score=word_score, language=language,
                            digits=digits, device=device, progress=not quiet, max_bad_fraction=max_bad_fraction,
                            trust=trust_checkpoint)
        typer.echo(summary_markdown(rows), nl=False)
        typer.echo(f"hypotheses: {out / 'hypotheses.jsonl'}; summary: {out / 'summary.md'}")
