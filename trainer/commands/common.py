"""What the ``trainer`` commands share: error exit, ``--set`` parsing, and the run-control options,
declared once so that ``trainer pretrain`` and ``trainer finetune`` spell and explain them alike."""

from __future__ import annotations

import functools
import inspect
import os
from contextlib import contextmanager

import typer
import yaml

from corpus_tools.bad_data import BadDataError

DIVERGED_EXIT_CODE = 3  # trainer.guard.DIVERGED_EXIT_CODE (not imported here: --help stays fast)


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(code)


@contextmanager
def run_errors(*also: type[Exception]):
    """How a run (or evaluation) that started ends early: one line on stderr, never a traceback.

    Divergence exits with 3; bad data over the limit, a checkpoint that cannot be written or
    read safely, bad input found once running (and the exception types in ``also``) exit with 2.
    """
    from trainer.checkpoint import CheckpointSaveError
    from trainer.guard import DivergedError

    # These stop every rank of a torchrun at the same step: rank 0 alone says why.
    together = fail if os.environ.get("RANK", "0") == "0" else _exit_quietly
    try:
        yield
    except DivergedError as e:
        together(str(e), DIVERGED_EXIT_CODE)
    except (BadDataError, CheckpointSaveError) as e:
        together(str(e))
    except (FileNotFoundError, ValueError, *also) as e:
        fail(str(e))


def _exit_quietly(message: str, code: int = 2) -> None:
    """How a rank other than 0 leaves: rank 0 says why, once."""
    raise typer.Exit(code)


def check_value(check, value, hint: str) -> None:
    """``check(value)``; the FileNotFoundError or ValueError it raises is a bad value of option ``hint``."""
    try:
        check(value)
    except (FileNotFoundError, ValueError) as e:
        raise typer.BadParameter(str(e), param_hint=hint)


def check_limits(max_bad_fraction: float, max_bad_steps: int = 0) -> None:
    """--max-bad-fraction is a share (0–1), --max-bad-steps a count (≥ 0)."""
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise typer.BadParameter("a share between 0 and 1 (1 never stops)", param_hint="--max-bad-fraction")
    if max_bad_steps < 0:
        raise typer.BadParameter("a number of steps ≥ 0 (0 never stops)", param_hint="--max-bad-steps")


def parse_overrides(items: list[str]) -> dict:
    """``--set KEY=VALUE`` items to a dict; values parsed as YAML (numbers, booleans, lists)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"--set expects KEY=VALUE, got {item!r}", param_hint="--set")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def check_shards(value: str, hint: str) -> None:
    """A shards option names at least one tar archive (a folder, glob, file or list of them)."""
    from corpus_tools.subset import shard_set_error  # reads shards with torch: not at --help time

    problem = shard_set_error(value)
    if problem is not None:
        raise typer.BadParameter(problem, param_hint=hint)


MAX_GRAD_NORM = typer.Option(0.0, help="Clip the gradient norm (0 = no clipping).")
PRECISION = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32.")
LOG_EVERY = typer.Option(None, help="Log training metrics every N steps.")
CKPT_EVERY = typer.Option(None, help="Write a checkpoint every N steps.")
KEEP_CHECKPOINTS = typer.Option(2, help="Step checkpoints to keep (best.pt is kept apart).")
RESUME = typer.Option(False, "--resume", help="Continue from the newest checkpoint in --out that loads "
                                                "(damaged ones are renamed *.damaged and reported).")
STOP_AFTER = typer.Option(None, help="Stop after this step (resume later with --resume).")
NUM_WORKERS = typer.Option(None, help="DataLoader workers per GPU (default 0 on CPU, 4 on GPU).")
TENSORBOARD = typer.Option(False, "--tensorboard", help="Also log to RUN_DIR/tensorboard.")
MODEL_OVERRIDES = typer.Option([], "--set", help="Model config override KEY=VALUE (repeatable).")
QUIET = typer.Option(False, "--quiet", help="No progress lines on stdout.")
MAX_BAD_FRACTION = typer.Option(
    0.001, help="Stop when more than this share of the utterances read is bad (does not decode, empty, "
                "NaN samples, broken json; a truncated shard counts as one), over at least 10,000 utterances; "
                "bad ones are skipped and named. 1 never stops.")
MAX_BAD_STEPS = typer.Option(
    20, help="Stop as diverged (exit 3) after this many steps in a row whose loss or gradient norm is not "
             "finite, or when half of the last 100 are; such steps are not applied. 0 never stops.")
TRUST_CHECKPOINT = typer.Option(
    False, "--trust-checkpoint",
    help="Load checkpoints that need more than plain types (weights_only=False). A pickle can run code: "
         "only for files you trust.")

# The last options of both training commands, in this order (``with_run_options``).
RUN_OPTIONS = {"tensorboard": (bool, TENSORBOARD), "set_": (list[str], MODEL_OVERRIDES), "quiet": (bool, QUIET),
               "max_bad_fraction": (float, MAX_BAD_FRACTION), "max_bad_steps": (int, MAX_BAD_STEPS),
               "trust_checkpoint": (bool, TRUST_CHECKPOINT)}


def with_run_options(command):
    """Append ``RUN_OPTIONS`` to a command's options; the command gets their values as one dict ``run``."""
    own = [p for name, p in inspect.signature(command, eval_str=True).parameters.items() if name != "run"]
    shared = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option, annotation=kind)
              for name, (kind, option) in RUN_OPTIONS.items()]

    @functools.wraps(command)
    def wrapper(**kwargs):
        return command(**{k: v for k, v in kwargs.items() if k not in RUN_OPTIONS},
                       run={k: kwargs[k] for k in RUN_OPTIONS})

    wrapper.__signature__ = inspect.Signature(own + shared, return_annotation=None)
    wrapper.__annotations__ = {p.name: p.annotation for p in own + shared}
    return wrapper
