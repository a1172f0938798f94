"""Segmentation statistics: the Table 14 view (thesis §6.2.4) and per-rule accounting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from corpus_tools.manifests import WorkDir, read_recordings, scan_segments
from corpus_tools.segment.runner import METHODS

TABLE_COLUMNS = ("method", "segments", "hours", "discarded_pct", "mean_s", "min_s", "max_s",
                 "phrase_h", "short_h", "off_speech_h", "music_vad_h", "failed_h", "aligner", "diarizer")
TEXT_COLUMNS = ("method", "aligner", "diarizer")


def model_label(identity: dict | None, kind: str) -> str:
    """How a recorded model identity (``models.identify``) is named in tables: the Whisper
    aligner as ``whisper (<Whisper model>)``, a random-weight stand-in marked as one."""
    if not identity:
        return ""
    name = str(identity.get("name", "?"))
    if kind == "align" and identity.get("kind") == "whisper-ct2":
        name = f"whisper ({name})"
    return f"{name} (RANDOM STAND-IN)" if identity.get("stand_in") else name


def method_stats(wd: WorkDir, methods: list[str] | None = None) -> pl.DataFrame:
    """One row per method present: the paper's columns plus hours dropped per rule.

    ``discarded_pct`` is relative to the ok audio given to segmentation. ``off_speech_h`` is
    the segments dropped because none of their words lay in speech (``off-speech``).
    ``music_vad_h`` is audio no segment of the method ever covered (music, silence, noise the
    models skipped, the tail of ``seq``), i.e. what remains after the other rules are
    accounted for. ``aligner`` and ``diarizer`` name the models recorded in the method's
    drops.json (empty for methods that use none).
    """
    recs = read_recordings(wd.recordings)
    ok_s = float(recs.filter(pl.col("status") == "ok")["duration"].sum() or 0.0)
    ingest_failed_s = float(recs.filter(pl.col("status") == "failed")["duration"].fill_null(0).sum() or 0.0)
    rows = []
    present = wd.methods_present()
    for m in sorted(methods or present, key=lambda x: METHODS.index(x) if x in METHODS else 99):
        if m not in present:
            raise FileNotFoundError(f"no segments for method {m} in {wd.root} (present: {', '.join(present) or 'none'})")
        seg = duration_summary(wd.segments(m))
        drops_path = wd.segments_dir / f"{m}.drops.json"
        drops = json.loads(drops_path.read_text()) if drops_path.exists() else {}
        rules = drops.get("rules_seconds", {})
        kept = seg["sum"]
        phrase, short, off = rules.get("phrase", 0.0), rules.get("short", 0.0), rules.get("off-speech", 0.0)
        failed = drops.get("failed_seconds", 0.0)
        # Merging can cover short pauses between segments, so the residual is clamped at 0.
        music = max(0.0, ok_s - kept - phrase - short - off - failed)
        models = drops.get("models", {})
        rows.append({
            "method": m, "segments": seg["count"], "hours": kept / 3600,
            "discarded_pct": 100.0 * (1 - kept / ok_s) if ok_s else 0.0,
            "mean_s": seg["mean"], "min_s": seg["min"], "max_s": seg["max"],
            "phrase_h": phrase / 3600, "short_h": short / 3600,
            "off_speech_h": off / 3600, "music_vad_h": music / 3600, "failed_h": (failed + ingest_failed_s) / 3600,
            "aligner": model_label(models.get("align"), "align"),
            "diarizer": model_label(models.get("diarization"), "diarization"),
        })
    return pl.DataFrame(rows, schema={c: (pl.String if c in TEXT_COLUMNS else pl.Int64 if c == "segments" else pl.Float64)
                                      for c in TABLE_COLUMNS})


def duration_summary(path: Path) -> dict[str, float | int]:
    """Count, sum, mean, min and max of a manifest's segment lengths (0.0 for an empty one),
    aggregated by the streaming engine: the manifest is never in memory whole."""
    d = pl.col("duration")
    row = (scan_segments(path).select(d.len().alias("count"), d.sum().alias("sum"), d.mean().alias("mean"),
                                      d.min().alias("min"), d.max().alias("max"))
           .collect(engine="streaming").row(0, named=True))
    return {k: (v if k == "count" else float(v or 0.0)) for k, v in row.items()}


def length_histogram(path: Path, bins: int = 30,
                     span: tuple[float, float] = (0.0, 32.0)) -> tuple[np.ndarray, np.ndarray, int]:
    """``np.histogram`` of a manifest's segment lengths, summed over its row groups (so that
    memory holds one group): counts, bin edges and the number of segments."""
    import pyarrow.parquet as pq

    edges = np.histogram_bin_edges([], bins=bins, range=span)
    counts = np.zeros(bins, dtype=np.int64)
    n = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=["duration"]):
        d = batch.column(0).cast("float64").to_numpy(zero_copy_only=False)
        n += len(d)
        counts += np.histogram(d[~np.isnan(d)], bins=edges)[0]
    return counts, edges, n


def plot_lengths(wd: WorkDir, out_png: Path, methods: list[str] | None = None) -> Path:
    """Histogram of segment lengths per method (one panel each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [m for m in (methods or wd.methods_present())]
    n = max(1, len(present))
    cols = min(5, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, m in zip(axes.flat, present):
        counts, edges, n = length_histogram(wd.segments(m))
        ax.hist(edges[:-1], bins=edges, weights=counts, color="tab:blue")  # the bars of ax.hist(durations)
        ax.set_title(f"{m} (n={n})", fontsize=9)
        ax.set_xlabel("length (s)", fontsize=8)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
