"""The run log: ``RUN_DIR/log.jsonl`` (one JSON record per line) and, optionally, TensorBoard.

Rank 0 writes it. A resumed run first drops what the killed run logged after the checkpoint it
starts from, so that the log holds each step once. It is read back by
``corpus_tools.runs.read_run_log`` (``trainer plot``, ``corpus report``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corpus_tools.atomic import write_text
from corpus_tools.runs import log_lines


class RunLog:
    """JSONL log (always) + optional TensorBoard, written by rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, start_step: int = 0):
        self.enabled = enabled
        self.path = run_dir / "log.jsonl"
        self.tb = None
        if enabled:
            self._keep_until(start_step)
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: events a killed run wrote after the checkpoint are dropped
                self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
            except Exception as e:  # tensorboard is optional
                print(f"[trainer] TensorBoard disabled ({e}); logging to {self.path} only")

    def _keep_until(self, step: int) -> None:
        """Drop what a previous run logged after ``step`` (the checkpoint this run starts from;
        0 for a fresh start): a run killed after its last checkpoint logged steps that the
        resumed run logs again, and the log must hold each step once."""
        if not self.path.exists():
            return
        kept = []
        for line, rec in log_lines(self.path):
            try:
                if rec["step"] <= step:
                    kept.append(line + "\n")
            except (KeyError, TypeError):
                continue
        write_text(self.path, "".join(kept), mode=None)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{record['split']}/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
