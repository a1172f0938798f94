"""Learning-rate schedules and the batch-size learning-rate heuristics (thesis ch. 5).

Every schedule is a pure function of the optimizer step, so resuming needs only the step.

* ``cyclic``: triangular cyclic (nanow2v2's ``CyclicLR(mode="triangular")``): ``cycle_up`` steps
  linearly from peak/100 to peak, ``cycle_down`` steps back, repeat (25 k / 25 k by default).
* ``tri_stage``: 10 % linear warm-up from peak/100, 40 % hold, 50 % exponential decay to peak/20
  (nanow2v2 / fairseq ``tri_stage``).
* ``two_stage``: 10 % linear warm-up from peak/1000, then cosine decay to peak/100.
* ``constant``: the peak everywhere (for tests and sweeps).

Heuristics for a global batch of ``s`` seconds, anchored at 5e-4 for 6000 s (thesis §5.3):
``linear`` 5e-4·s/6000, ``sqrt`` 5e-4·sqrt(s/6000) (``--lr auto``), ``const`` 5e-4.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

SCHEDULES = ("cyclic", "tri_stage", "two_stage", "constant")
REFERENCE_LR, REFERENCE_SECONDS = 5e-4, 6000.0


def lr_heuristic(batch_seconds: float, rule: str = "sqrt") -> float:
    """Peak LR for a global batch of ``batch_seconds`` seconds by the 'linear', 'sqrt' or 'const' rule."""
    if batch_seconds <= 0:
        raise ValueError("batch seconds must be positive")
    ratio = batch_seconds / REFERENCE_SECONDS
    if rule == "linear":
        return REFERENCE_LR * ratio
    if rule == "sqrt":
        return REFERENCE_LR * math.sqrt(ratio)
    if rule == "const":
        return REFERENCE_LR
    raise ValueError(f"unknown LR rule {rule!r}; use linear, sqrt or const")


@dataclass
class Schedule:
    """``lr(step)`` for one of ``SCHEDULES``; ``total_steps`` sets the phase lengths of the staged ones."""

    name: str
    peak_lr: float
    total_steps: int
    cycle_up: int = 25_000
    cycle_down: int = 25_000
    phases: tuple[float, float, float] = (0.1, 0.4, 0.5)

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; use one of {', '.join(SCHEDULES)}")
        self.phases = tuple(self.phases)

    def __call__(self, step: int) -> float:
        return getattr(self, f"_{self.name}")(step)

    def to_dict(self) -> dict:
        return asdict(self)

    def _constant(self, step: int) -> float:
        return self.peak_lr

    def _cyclic(self, step: int) -> float:
        low = self.peak_lr / 100
        pos = step % (self.cycle_up + self.cycle_down)
        frac = pos / self.cycle_up if pos < self.cycle_up else 1 - (pos - self.cycle_up) / self.cycle_down
        return low + (self.peak_lr - low) * frac

    def _tri_stage(self, step: int) -> float:
        warm = max(int(self.phases[0] * self.total_steps), 1)
        hold = int(self.phases[1] * self.total_steps)
        decay = max(self.total_steps - warm - hold, 1)
        init, final = self.peak_lr / 100, self.peak_lr / 20
        if step < warm:
            return init + (self.peak_lr - init) * step / warm
        if step < warm + hold:
            return self.peak_lr
        t = min((step - warm - hold) / decay, 1.0)
        return self.peak_lr * math.exp(math.log(final / self.peak_lr) * t)

    def _two_stage(self, step: int) -> float:
        warm = max(int(self.phases[0] * self.total_steps), 1)
        init, final = self.peak_lr / 1000, self.peak_lr / 100
        if step < warm:
            return init + (self.peak_lr - init) * step / warm
        t = min((step - warm) / max(self.total_steps - warm, 1), 1.0)
        return final + (self.peak_lr - final) * 0.5 * (1 + math.cos(math.pi * t))
