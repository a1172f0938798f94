"""Guards of the training step: a non-finite step is not applied, divergence stops the run, and
every DDP rank takes the same decision, also when one of them has no data for a micro-batch.

After its backward passes each step asks ``step_verdict`` for the facts every rank acts on,
summed over ranks in one small all-reduce: whether any rank's loss or the gradient norm is not
finite, how many real rows the step had, and the step's bad-data counts. A step that is not
finite changes no weight and no optimizer state (its gradients are dropped); its ``step``
still advances, so the schedule, the gumbel temperature and the data position
(``batches_per_rank = step × accumulation``) stay what an uninterrupted run has. ``StepGuard``
counts such steps and says when to stop: ``max_bad_steps`` in a row, or half of the last 100
steps. ``check_finite_weights`` runs before every save, so no checkpoint holds NaN or inf.

An empty micro-batch (every utterance of it was bad data) is skipped in a single process; under
DDP that rank runs the model on ``dummy_batch()`` with weight 0, so that every rank's gradient
all-reduce still happens and no rank waits for one that never comes.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import torch

from corpus_tools.audio import SAMPLE_RATE
from corpus_tools.data.batch import Batch

DEFAULT_MAX_BAD_STEPS = 20
DIVERGENCE_WINDOW = 100
DIVERGENCE_SHARE = 0.5
DIVERGED_EXIT_CODE = 3


class DivergedError(RuntimeError):
    """The run diverged at ``step``."""

    def __init__(self, step: int, reason: str):
        self.step = int(step)
        self.reason = reason
        super().__init__(f"diverged at step {step}: {reason}")


class StepGuard:
    """Counts steps that were not applied; ``record`` returns why to stop, or None.

    ``max_bad_steps`` (0 turns stopping off) non-finite steps in a row, or at least
    ``DIVERGENCE_SHARE`` of the last ``DIVERGENCE_WINDOW`` steps, stop the run.
    """

    def __init__(self, max_bad_steps: int = DEFAULT_MAX_BAD_STEPS, window: int = DIVERGENCE_WINDOW,
                 share: float = DIVERGENCE_SHARE):
        self.max_bad_steps = int(max_bad_steps)
        self.share = float(share)
        self.recent: collections.deque[bool] = collections.deque(maxlen=int(window))
        self.in_a_row = 0
        self.skipped = 0

    def record(self, ok: bool) -> str | None:
        self.recent.append(bool(ok))
        self.in_a_row = 0 if ok else self.in_a_row + 1
        self.skipped += not ok
        if self.max_bad_steps <= 0 or ok:
            return None
        if self.in_a_row >= self.max_bad_steps:
            return f"loss or gradient norm not finite in {self.in_a_row} steps in a row"
        bad = self.recent.count(False)
        if bad >= self.share * self.recent.maxlen:
            return f"loss or gradient norm not finite in {bad} of the last {self.recent.maxlen} steps"
        return None

    def state(self) -> dict:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row, "recent": [bool(x) for x in self.recent]}

    def load_state(self, state: dict | None) -> None:
        state = state or {}
        self.skipped = int(state.get("skipped", 0))
        self.in_a_row = int(state.get("in_a_row", 0))
        self.recent.clear()
        self.recent.extend(bool(x) for x in state.get("recent", []))


@dataclass
class StepVerdict:
    """What one step was, over all ranks."""

    finite: bool
    rows: int          # real utterances in the step's micro-batches
    grad_norm: float
    good: int          # bad-data counts of the step's batches (corpus_tools.bad_data)
    bad: int
    bad_shards: int

    @property
    def apply(self) -> bool:
        """Whether the optimizer steps: finite, and some rank had data."""
        return self.finite and self.rows > 0


def step_verdict(loss_sum: torch.Tensor | float, grad_norm: torch.Tensor, rows: int,
                 counts: tuple[int, int, int], dist) -> StepVerdict:
    """The step's facts, summed over ranks (one all-reduce, one host sync)."""
    device = dist.device if dist.ddp else grad_norm.device  # no grads at all: clip_grad_norm_ gives a CPU 0
    grad_norm = grad_norm.detach().to(device)
    loss_sum = torch.as_tensor(loss_sum, dtype=torch.float32, device=device)
    not_finite = (~torch.isfinite(loss_sum)) | (~torch.isfinite(grad_norm))
    host = torch.tensor([float(rows), *map(float, counts)], dtype=torch.float64)
    facts = torch.cat([torch.stack([not_finite.to(torch.float64), grad_norm.to(torch.float64)]),
                       host.to(device, non_blocking=True)])
    if dist.ddp:
        torch.distributed.all_reduce(facts)
    bad, norm, rows_, good, bad_utts, shards = facts.tolist()
    world = dist.world if dist.ddp else 1
    return StepVerdict(finite=bad == 0, rows=int(rows_), grad_norm=norm / world, good=int(good), bad=int(bad_utts),
                       bad_shards=int(shards))


def dummy_batch(seconds: float = 1.0):
    """A one-row batch of fixed speech-like noise (no RNG drawn) for a rank without data."""
    n = int(seconds * SAMPLE_RATE)
    audio = np.random.default_rng(0x5EED).standard_normal(n).astype(np.float32) * 0.1
    return Batch(torch.from_numpy(audio)[None], torch.tensor([n]), ["<dummy>"], [{}])


def weights_finite(model: torch.nn.Module) -> bool:
    """Whether every floating-point parameter and buffer is finite (one host sync)."""
    flags = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def check_finite_weights(model: torch.nn.Module, step: int) -> None:
    """Raise ``DivergedError`` instead of letting non-finite weights reach a checkpoint."""
    if not weights_finite(model):
        raise DivergedError(step, "the weights are no longer finite (no checkpoint written)")


__all__ = ["DEFAULT_MAX_BAD_STEPS", "DIVERGED_EXIT_CODE", "DivergedError", "StepGuard", "StepVerdict",
           "check_finite_weights", "dummy_batch", "step_verdict", "weights_finite"]
