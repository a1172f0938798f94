"""`corpus stem`: Demucs vocal / instrumental stems of FMA for mix-instr and mix-vocal."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from corpus_tools.parallel.stems import stem_clips_ray
from corpus_tools.progress import fail, progress_bar, stdout, user_errors
from corpus_tools.stems import default_device, manifest_clips, stem_clips


def stem(
    manifest: Annotated[Path, typer.Argument(help="FMA music manifest (`corpus import fma`).",
                                             show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Stem folder (vocals/, "
                                         "instrumental/, stems.parquet).")],
    demucs_model: Annotated[str, typer.Option(help="Demucs model: a name (htdemucs, looked up in "
                                              "--models-dir first) or a saved .th file.")] = "htdemucs",
    models_dir: Annotated[Optional[Path], typer.Option(help="Models folder (default: "
                                                       "$CORPUS_MODELS).")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto (cuda when present).")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Clips separated together (zero padded).")] = 4,
    min_vocal_seconds: Annotated[float, typer.Option(help="Vocal stems with less speech activity "
                                                     "(Silero VAD) are marked unusable and left "
                                                     "out of mix-vocal.")] = 0.5,
    shifts: Annotated[int, typer.Option(help="Demucs random shifts (0 = deterministic).")] = 0,
    threads: Annotated[int, typer.Option(help="CPU threads for torch (0 = torch default).")] = 0,
    backend: Annotated[str, typer.Option(help="local | ray: separate the batches on Ray actors "
                                         "(one per GPU, else --workers CPU actors).")] = "local",
    workers: Annotated[int, typer.Option(help="CPU actors for --backend ray (0 = one per two CPUs).")] = 0,
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address for --backend ray.")] = None,
) -> None:
    """Separate each music clip into a vocal and an instrumental stem (16 kHz mono wav).

    The instrumental stem is the sum of Demucs' non-vocal sources. Silero VAD measures
    speech activity on every vocal stem; clips without it (instrumental music) are marked
    usable_vocal = false. A rerun skips finished clips, so an interrupted run resumes.
    """
    with user_errors():
        if backend not in ("local", "ray"):
            raise fail(f"--backend must be local or ray, not {backend!r}")
        if batch_size <= 0:
            raise fail("--batch-size must be positive")
        if device not in ("auto", "cpu") and not device.startswith("cuda"):
            raise fail(f"--device must be cpu, cuda[:N] or auto, not {device!r}")
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        dev = default_device() if device == "auto" else device
        if dev.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise fail("--device cuda asked for but no GPU is visible")
        n = len(manifest_clips(manifest))
        counts = {"done": 0, "skipped": 0, "failed": 0}
        with progress_bar() as bar:
            task = bar.add_task("stem", total=n, info="")

            def on_clip(clip_id: str, status: str) -> None:
                counts[status] += 1
                bar.update(task, advance=1, info=status)

            models = models_dir or (Path(os.environ["CORPUS_MODELS"])
                                    if os.environ.get("CORPUS_MODELS") else None)
            try:
                if backend == "ray":
                    df = stem_clips_ray(manifest, output, model=demucs_model, models_dir=models,
                                        device=device, batch_size=batch_size,
                                        min_vocal_seconds=min_vocal_seconds, shifts=shifts,
                                        address=ray_address, workers=workers, threads=threads,
                                        on_clip=on_clip)
                else:
                    df = stem_clips(manifest, output, model=demucs_model, models_dir=models, device=dev,
                                    batch_size=batch_size, min_vocal_seconds=min_vocal_seconds,
                                    shifts=shifts, on_clip=on_clip)
            except RuntimeError as exc:  # model loading problems: one line, no traceback
                raise fail(str(exc)) from None
    usable = int(df["usable_vocal"].sum()) if df.height else 0
    stdout.print(f"{df.height} clips in {output / 'stems.parquet'}: {counts['done']} separated, "
                 f"{counts['skipped']} already done, {counts['failed']} failed; {usable} vocal "
                 f"stems usable for mix-vocal")


def register(app: typer.Typer) -> None:
    app.command("stem")(stem)
