"""What a user sees: our progress and summaries, not the libraries' chatter.

The models we run talk a lot on every load and every recording: WhisperX logs INFO lines
to stdout and prints "vad_method is ignored", Lightning logs "automatically upgraded your
loaded checkpoint" each time pyannote loads a checkpoint, and torchaudio, torio and
pyannote emit deprecation warnings about their own internals. None of it concerns the
user's data, so by default it is hidden; ``corpus --verbose`` (or ``CORPUS_LOG=debug``)
shows all of it. Warnings about the data or the models (a stand-in model, a file that
failed, whisperx's "Failed to align segment") stay visible either way.

One place for all of it: :func:`configure` (called by the ``corpus`` callback, and by
every worker process or Ray actor, which inherit nothing from the driver but the
environment) and :func:`library_prints` around the library calls that ``print``.
Python's own ``-W`` / ``PYTHONWARNINGS`` options win over the warning filters here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import warnings
from typing import Iterator

ENV = "CORPUS_LOG"
_VERBOSE_VALUES = ("debug", "verbose", "info", "1", "true", "yes")

# logger -> level while quiet (their INFO lines are routine, their warnings are kept)
NOISY_LOGGERS: dict[str, int] = {
    "whisperx": logging.WARNING,  # "Performing voice activity detection using Pyannote..."
    "lightning.pytorch.utilities.migration": logging.WARNING,  # "...automatically upgraded..."
    "pytorch_lightning.utilities.migration": logging.WARNING,
    "lightning_fabric.utilities.migration": logging.WARNING,
    "speechbrain": logging.WARNING,
}

# warnings about the libraries' own code (message regexes, matched from the start)
NOISY_WARNING_MESSAGES = (
    r"torchaudio\.\S+ has been deprecated",
    r"torio\.\S+ has been deprecated",
    r"In 2\.9, this function's implementation will be changed",
    r".*With dispatcher enabled, this function is no-op",
    r"std\(\): degrees of freedom is <= 0",  # pyannote's statistics pooling on short chunks
    r"TensorFloat-32 \(TF32\) has been disabled",  # pyannote's reproducibility notice
    r".*torch\.cuda\.amp\.\S+ is deprecated",
    r".*`torch\.nn\.utils\.weight_norm` is deprecated",
)
# deprecation and future warnings raised from these packages are about their internals
NOISY_WARNING_MODULES = (r"(torchaudio|torio|torchcodec|pyannote|lightning|pytorch_lightning|"
                         r"lightning_fabric|whisperx|speechbrain|asteroid_filterbanks|"
                         r"torch_audiomentations|transformers|lhotse|ctranslate2)(\..*)?$")
# lines libraries print to stdout
NOISY_PRINTS = (re.compile(r"Use manually assigned vad_model\. vad_method is ignored\."),)

_HANDLER_MARK = "_corpus_tools_handler"
_FILTERS: list[tuple] = []  # the filters this module added (so a later call can remove them)


def verbose_requested() -> bool:
    """``CORPUS_LOG`` asks for the libraries' output (``debug``, ``verbose``, ``1``, ...)."""
    return os.environ.get(ENV, "").strip().lower() in _VERBOSE_VALUES


def configure(verbose: bool | None = None) -> bool:
    """Set the libraries' loggers and warning filters; returns whether output is verbose.

    ``verbose=None`` reads ``CORPUS_LOG``. ``verbose=True`` is written back to
    ``CORPUS_LOG`` so that spawned workers (and a local Ray cluster) are verbose too.
    Idempotent: call it again with another setting and it switches.
    """
    if verbose is None:
        verbose = verbose_requested()
    if verbose:
        os.environ[ENV] = "debug"
    elif verbose_requested():
        os.environ.pop(ENV, None)
    _configure_loggers(verbose)
    _configure_warnings(verbose)
    return verbose


def _own_handler(logger: logging.Logger) -> None:
    """A stderr handler of ours: WhisperX would add one writing to stdout on first use."""
    for h in logger.handlers:
        if getattr(h, _HANDLER_MARK, False):
            return
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    setattr(handler, _HANDLER_MARK, True)
    logger.addHandler(handler)


def _configure_loggers(verbose: bool) -> None:
    for name, quiet_level in NOISY_LOGGERS.items():
        logger = logging.getLogger(name)
        logger.setLevel(logging.NOTSET if verbose else quiet_level)
    whisperx = logging.getLogger("whisperx")
    _own_handler(whisperx)
    whisperx.propagate = False
    # verbose: each library's logger at its own default level, through its own handler
    # (Lightning brings one; a root handler of ours would print its lines twice)
    whisperx.setLevel(logging.INFO if verbose else NOISY_LOGGERS["whisperx"])


def _configure_warnings(verbose: bool) -> None:
    if sys.warnoptions:  # the user chose with -W / PYTHONWARNINGS
        return
    for f in _FILTERS:
        with contextlib.suppress(ValueError):
            warnings.filters.remove(f)
    _FILTERS.clear()
    before = list(warnings.filters)
    if verbose:
        warnings.simplefilter("default")  # deprecation warnings included
    else:
        for message in NOISY_WARNING_MESSAGES:
            warnings.filterwarnings("ignore", message=message)
        for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=NOISY_WARNING_MODULES)
    _FILTERS.extend(f for f in warnings.filters if f not in before)


@contextlib.contextmanager
def library_prints(source: str) -> Iterator[None]:
    """Run a library call whose ``print`` chatter (``NOISY_PRINTS``) should not reach the
    user: those lines go to the ``source`` logger at debug level while quiet; every other
    line is printed as usual."""
    if verbose_requested():
        yield
        return
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    finally:
        log = logging.getLogger(source)
        for line in buf.getvalue().splitlines(keepends=True):
            if any(p.search(line) for p in NOISY_PRINTS):
                log.debug(line.rstrip("\n"))
            else:
                sys.stdout.write(line)
