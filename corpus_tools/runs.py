"""Training runs as ``corpus report`` shows them, read from ``RUN_DIR/log.jsonl``.

``log_lines`` / ``read_run_log`` are the one reader of the trainer's log (``trainer plot`` and
``trainer``'s resume use them too): a torn last line of a killed run is skipped, and a step a
resumed run logged again is kept once (the later record wins). ``corpus_tools`` never imports
``trainer``: the log is plain JSONL. The rest turns the records into a summary row per run
(kind, steps, hours seen, last and best values, divergence), curves against step and against
hours of audio seen, and the rows of ``trainer evaluate`` summaries.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

# Fields drawn per run, in this order; a panel is drawn when at least one of its fields was
# logged. ``*`` matches a codebook index (ppl_cb0, ppl_cb1, ...).
CURVE_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("contrastive loss (nats / masked frame)", ("contrastive",)),
    ("loss as optimised", ("loss",)),
    ("diversity", ("diversity",)),
    ("masked accuracy", ("accuracy",)),
    ("error rate", ("wer", "cer")),
    ("codebook perplexity", ("ppl_cb*",)),
    ("learning rate", ("lr",)),
)


def log_lines(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(line, record) for each JSON object line of a ``log.jsonl``; a torn line (the last line
    of a killed run) and blank lines are skipped."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            yield line, rec


def read_run_log(run_dir: str | Path) -> list[dict]:
    """The records of ``RUN_DIR/log.jsonl``, one per (split, step), in step order.

    A run killed after its last checkpoint and resumed logs those steps again: the later
    record wins. A torn last line of a killed run is skipped.
    """
    path = Path(run_dir) / "log.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no log.jsonl in {run_dir}: is it a `trainer pretrain/finetune --out` folder?")
    latest: dict[tuple[str, object], dict] = {}
    for _, rec in log_lines(path):
        latest[(str(rec.get("split", "train")), rec.get("step"))] = rec
    return sorted(latest.values(), key=lambda r: (r.get("step") if _is_number(r.get("step")) else -1,
                                                  r.get("split", "train") != "train"))


def run_kind(records: list[dict]) -> str:
    if any("contrastive" in r for r in records):
        return "pre-training"
    if any("wer" in r or "frozen" in r for r in records):
        return "fine-tuning"
    return "training"


def field_names(records: list[dict], pattern: str) -> list[str]:
    """The numeric fields of ``records`` that ``pattern`` names (``*``: a codebook index, ``ppl_cb*``)."""
    if "*" not in pattern:
        return [pattern] if any(_is_number(r.get(pattern)) for r in records) else []
    head, tail = pattern.split("*")
    return sorted({k for r in records for k in r if k.startswith(head) and k.endswith(tail)
                   and k[len(head):len(k) - len(tail)].isdigit()})


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _series(records: list[dict], key: str, split: str, x: str = "step") -> list[tuple[float, float]]:
    return [(r[x], r[key]) for r in records
            if r.get("split", "train") == split and _is_number(r.get(key)) and _is_number(r.get(x))]


def diverged_step(records: list[dict]) -> int | None:
    """The step at which the trainer stopped the run as diverged (its ``diverged: true`` record)."""
    steps = [r.get("step") for r in records if r.get("diverged") is True]
    return max(steps) if steps else None


def run_summary(run_dir: Path, records: list[dict]) -> list[str]:
    """name, kind, last step, hours seen, last train loss, best validation value.

    A diverged run is marked as in the thesis' tables: its best validation value gets a ``∗``
    (Table 15) and a run without one reads ``DIV`` (Table 13); its steps read "S (diverged)".
    """
    train = [r for r in records if r.get("split", "train") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    kind = run_kind(records)
    last = train[-1] if train else {}
    steps = max((r.get("step", 0) for r in records), default=0)
    hours = max((r.get("hours_seen", 0.0) for r in records if _is_number(r.get("hours_seen"))), default=0.0)
    best = "–"
    if kind == "fine-tuning":
        wers = [r["wer"] for r in val if _is_number(r.get("wer"))]
        if wers:
            best = f"WER {100 * min(wers):.2f} %"
    else:
        losses = [r["loss"] for r in val if _is_number(r.get("loss"))]
        if losses:
            best = f"loss {min(losses):.4g}"
    last_loss = f"{last['loss']:.4g}" if _is_number(last.get("loss")) else "–"
    extra = f"contrastive {last['contrastive']:.3f}" if _is_number(last.get("contrastive")) else ""
    steps_text = str(steps)
    if diverged_step(records) is not None:
        best = "DIV" if best == "–" else best + "∗"
        steps_text = f"{diverged_step(records)} (diverged)"
    return [run_dir.name, kind, steps_text, f"{hours:.4f}", last_loss + (f" ({extra})" if extra else ""), best]


def plot_run_curves(run_dir: Path, records: list[dict], out_png: Path) -> Path | None:
    """One PNG with a panel per logged field group (train lines, validation dots) against step."""
    panels = [(title, [k for p in patterns for k in field_names(records, p)]) for title, patterns in CURVE_PANELS]
    panels = [(t, keys) for t, keys in panels if keys]
    if not panels:
        return None
    plt = _pyplot()
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows), squeeze=False)
    for ax, (title, keys) in zip(axes.flat, panels):
        for key in keys:
            for split, style in (("train", "-"), ("val", "o--")):
                pts = _series(records, key, split)
                if pts:
                    ax.plot(*zip(*pts), style, markersize=3, label=f"{key} ({split})")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        if title == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{run_dir.name} ({run_kind(records)})", fontsize=10)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_hours_seen(runs: list[tuple[Path, list[dict]]], out_png: Path) -> Path | None:
    """Contrastive loss against hours of audio seen, one line per pre-training run (thesis' x axis)."""
    curves = [(d.name, _series(recs, "contrastive", "train", x="hours_seen")) for d, recs in runs]
    curves = [(n, pts) for n, pts in curves if pts]
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, pts in curves:
        ax.plot(*zip(*pts), "-", label=name)
    ax.set_xlabel("hours of audio seen")
    ax.set_ylabel("contrastive loss (nats / masked frame)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def eval_rows(run_dir: Path) -> list[list[str]]:
    """Rows of every ``RUN_DIR/eval/*/summary.json`` written by `trainer evaluate`."""
    rows = []
    for path in sorted(run_dir.glob("eval/*/summary.json")):
        try:
            entries = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for e in entries if isinstance(entries, list) else []:
            rows.append([run_dir.name, str(path.parent.name), str(e.get("set", "")), str(e.get("utterances", "")),
                         _pct(e.get("greedy_wer")), _pct(e.get("greedy_cer")), _pct(e.get("lm_wer"))])
    return rows


def _pct(x) -> str:
    return f"{100 * x:.2f}" if _is_number(x) else "–"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
