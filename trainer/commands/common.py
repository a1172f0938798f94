"""What ``trainer pretrain`` and ``trainer finetune`` share: error exit, ``--set`` parsing, and
the run-control options, declared once so both commands spell and explain them alike."""

from __future__ import annotations

import typer


def fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(2)


def parse_overrides(items: list[str]) -> dict:
    """``--set KEY=VALUE`` items to a dict; values parsed as YAML (numbers, booleans, lists)."""
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"--set expects KEY=VALUE, got {item!r}", param_hint="--set")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def check_shards(value: str, hint: str) -> None:
    """A shards option names at least one tar archive (a folder, glob, file or list of them)."""
    import tarfile

    from corpus_tools.reader import list_shards

    try:
        found = list_shards(value)
    except (FileNotFoundError, ValueError):
        found = []
    if not found:
        raise typer.BadParameter(f"no *.tar shards found in {value}", param_hint=hint)
    for path in found:
        if not tarfile.is_tarfile(path):
            raise typer.BadParameter(f"{path} is not a tar shard (write shards with `corpus shard`)",
                                     param_hint=hint)


MAX_GRAD_NORM = typer.Option(0.0, help="Clip the gradient norm (0 = no clipping).")
PRECISION = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32.")
LOG_EVERY = typer.Option(None, help="Log training metrics every N steps.")
CKPT_EVERY = typer.Option(None, help="Write a checkpoint every N steps.")
KEEP_CHECKPOINTS = typer.Option(2, help="Step checkpoints to keep (best.pt is kept apart).")
RESUME = typer.Option(False, "--resume", help="Continue from the latest checkpoint in --out.")
STOP_AFTER = typer.Option(None, help="Stop after this step (resume later with --resume).")
NUM_WORKERS = typer.Option(None, help="DataLoader workers per GPU (default 0 on CPU, 4 on GPU).")
TENSORBOARD = typer.Option(False, "--tensorboard", help="Also log to RUN_DIR/tensorboard.")
MODEL_OVERRIDES = typer.Option([], "--set", help="Model config override KEY=VALUE (repeatable).")
QUIET = typer.Option(False, "--quiet", help="No progress lines on stdout.")
