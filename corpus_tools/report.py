"""`corpus report`: one Markdown or HTML page summing up a work directory and training runs.

Sections, each only when its inputs exist:

1. **Ingest** — files and hours per status, and per reason category for failed/filtered
   recordings (``recordings.parquet``).
2. **Segmentation** — the Table 14 table of every method (``corpus_tools.stats.method_stats``),
   an hours funnel per method (ok audio → phrase filter → short → off-speech → music/VAD →
   kept), the aligner and diarizer of each wx-* method, and the length histograms
   (``corpus_tools.stats.plot_lengths``).
   **Segmentation quality** — when ``segments/scores.json`` exists (`corpus score`): the score
   table per method against the reference annotations.
3. **Shards** — per shard set given with ``shards``: shards, utterances, hours, size.
4. **Training runs** — per run directory: kind (pre-training / fine-tuning, told apart by the
   logged fields), steps, hours of audio seen, last and best values; the curves drawn from
   ``RUN_DIR/log.jsonl`` and, for several pre-training runs, their contrastive losses against
   hours of audio seen on one plot; evaluation summaries found in ``RUN_DIR/eval/*/summary.json``.

The training runs' part (reading ``log.jsonl``, summaries, curves) is ``corpus_tools.runs``.
Images are PNG files in ``<report stem>_files/`` next to the report; Markdown links them, HTML
embeds them as base64 by default (a single file that can be mailed) or links them.

The page is built as a list of blocks (heading, paragraph, table, image) that two small
renderers turn into Markdown or HTML, so both formats always hold the same content.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import polars as pl

from corpus_tools.atomic import write_text
from corpus_tools.manifests import WorkDir, read_recordings
from corpus_tools.runs import (diverged_step, eval_rows, plot_hours_seen, plot_run_curves, read_run_log, run_kind,
                               run_summary)
from corpus_tools.score.run import SCORES_JSON, read_scores
from corpus_tools.score.table import display_rows
from corpus_tools.stats import method_stats, plot_lengths

# -- blocks ------------------------------------------------------------------------------


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str | None = None


@dataclass
class Image:
    path: Path
    caption: str


Block = Heading | Para | Table | Image


@dataclass
class Report:
    title: str
    blocks: list[Block] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)

    def add(self, *blocks: Block) -> None:
        for b in blocks:
            self.blocks.append(b)
            if isinstance(b, Image):
                self.images.append(b.path)


# -- ingest ------------------------------------------------------------------------------


def reason_category(reason: str | None) -> str:
    """A short class of an ingest reason, for grouping: the text before ':' or '(' and ids.

    ``"genre dropped: sport (matches 'sport')"`` → ``genre dropped``;
    ``"duplicate of bc000 (same title, summary, date)"`` → ``duplicate``;
    ``"longer than 3 h (3.20 h)"`` → ``longer than 3 h``.
    """
    if not reason:
        return ""
    head = re.split(r"[:(]", reason, maxsplit=1)[0].strip()
    if head.startswith("duplicate of"):
        return "duplicate"
    return head or reason.strip()


def ingest_table(recordings: pl.DataFrame) -> pl.DataFrame:
    """Files and hours per (status, reason category); ok first, then by hours."""
    df = recordings.with_columns(
        pl.col("duration").fill_null(0.0),
        pl.col("reason").map_elements(reason_category, return_dtype=pl.String).fill_null("").alias("category"),
    )
    out = (df.group_by("status", "category")
             .agg(pl.len().alias("files"), (pl.col("duration").sum() / 3600).alias("hours"))
             .with_columns(pl.col("status").replace_strict({"ok": 0, "filtered": 1, "failed": 2}, default=3,
                                                           return_dtype=pl.Int64).alias("_order"))
             .sort("_order", "hours", descending=[False, True])
             .drop("_order"))
    return out


# -- segmentation ------------------------------------------------------------------------


def funnel_rows(stats: pl.DataFrame, ok_hours: float) -> list[list[str]]:
    """Per method: the ok hours given to segmentation and where they went (Σ = ok hours)."""
    rows = []
    for r in stats.iter_rows(named=True):
        rows.append([r["method"], f"{ok_hours:.3f}", f"{r['phrase_h']:.3f}", f"{r['short_h']:.3f}",
                     f"{r['off_speech_h']:.3f}", f"{r['music_vad_h']:.3f}", f"{r['failed_h']:.3f}",
                     f"{r['hours']:.3f}", f"{r['discarded_pct']:.2f}"])
    return rows


def model_rows(stats: pl.DataFrame) -> list[list[str]]:
    """Per method that used them: the aligner and diarizer recorded in its drops.json."""
    return [[r["method"], r["aligner"] or "–", r["diarizer"] or "–"]
            for r in stats.iter_rows(named=True) if r["aligner"] or r["diarizer"]]


def table14_rows(stats: pl.DataFrame) -> list[list[str]]:
    return [[r["method"], f"{r['segments']:,}", f"{r['hours']:.3f}", f"{r['discarded_pct']:.2f}",
             f"{r['mean_s']:.2f}", f"{r['min_s']:.2f}", f"{r['max_s']:.2f}"] for r in stats.iter_rows(named=True)]


def segmentation_quality_blocks(wd: WorkDir, methods: list[str] | None = None) -> list[Block]:
    """The `corpus score` table of ``segments/scores.json``; nothing when it does not exist."""
    scores = read_scores(wd)
    rows_in = [r for r in (scores or {}).get("methods", []) if not methods or r.get("method") in methods]
    if not rows_in:
        return []
    headers, rows = display_rows(rows_in, scores.get("collars", []))
    scored, skipped = len(scores.get("scored", [])), len(scores.get("skipped", []))
    scored_at = (wd.segments_dir / SCORES_JSON).stat().st_mtime
    newer = [r["method"] for r in rows_in if wd.segments(r["method"]).exists()
             and wd.segments(r["method"]).stat().st_mtime > scored_at]
    stale = ([Para(f"Segments of {', '.join(newer)} were written after these scores: rerun `corpus score`.")]
             if newer else [])
    return [Heading("Segmentation quality"), *stale,
            Para(f"`corpus score` against {scores.get('reference', 'a reference')}: {scored} recording(s) "
                 f"scored, {skipped} without a reference skipped. Shares are of kept time, summed over "
                 f"the scored recordings (music under speech counts as both); purity is the kept time "
                 f"spoken by each segment's dominant reference speaker; 2-spk segments have a second "
                 f"speaker for more than {scores.get('second_speaker_min_s', 1.0):g} s; DER/JER are "
                 f"pyannote.metrics' at each collar (see docs/score.md)."),
            Table(headers, rows, caption="Segmentation quality per method")]


# -- shards ------------------------------------------------------------------------------


def shard_summary(shard_dir: Path) -> list[str]:
    """One table row for a shard folder written by `corpus shard` / `corpus simulate`."""
    index = shard_dir / "shards.parquet"
    if not index.exists():
        raise FileNotFoundError(f"{index} not found: is {shard_dir} a `corpus shard -o` folder?")
    df = pl.read_parquet(index)
    return [str(shard_dir), str(df.height), f"{int(df['count'].sum()):,}", f"{float(df['hours'].sum()):.3f}",
            f"{float(df['min_duration'].min()):.2f}–{float(df['max_duration'].max()):.2f}",
            f"{int(df['bytes'].sum()) / 1e6:.1f}", ", ".join(sorted(set(df["format"].to_list())))]


# -- assembling --------------------------------------------------------------------------


def build_report(workdir: str | Path, out: str | Path, runs: Sequence[str | Path] = (),
                 shards: Sequence[str | Path] = (), methods: list[str] | None = None,
                 embed_images: bool | None = None, title: str | None = None) -> Path:
    """Write the report to ``out`` (``.md`` or ``.html``) and its PNGs to ``<stem>_files/``.

    ``embed_images`` (HTML only; default True) inlines the PNGs as base64. Raises
    FileNotFoundError / ValueError for missing inputs or an unknown suffix.
    """
    out = Path(out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("md", "html", "htm"):
        raise ValueError(f"report name must end in .md or .html, got {out.name}")
    wd = WorkDir(workdir)
    if not wd.recordings.exists():
        raise FileNotFoundError(f"{wd.recordings} not found: is {workdir} a work directory (`corpus ingest -o`)?")
    run_dirs = [Path(r) for r in runs]
    for r in run_dirs:
        if not (r / "log.jsonl").exists():
            raise FileNotFoundError(f"no log.jsonl in {r}: is it a `trainer pretrain/finetune --out` folder?")
    files = out.parent / f"{out.stem}_files"
    files.mkdir(parents=True, exist_ok=True)
    rep = Report(title or f"Corpus report: {wd.root}")

    # 1. ingest
    recs = read_recordings(wd.recordings)
    rep.add(Heading("Ingest"))
    total_h = float(recs["duration"].fill_null(0).sum() or 0.0) / 3600
    ok_h = float(recs.filter(pl.col("status") == "ok")["duration"].fill_null(0).sum() or 0.0) / 3600
    rep.add(Para(f"{recs.height} input files, {total_h:.3f} h of audio; {ok_h:.3f} h ok and given to "
                 f"segmentation. Failed files are unusable media (empty, truncated, not audio, no audio "
                 f"stream); filtered ones were removed by a metadata rule (genre, > 3 h, duplicate)."))
    ing = ingest_table(recs)
    rep.add(Table(["status", "reason", "files", "hours"],
                  [[r["status"], r["category"] or "–", str(r["files"]), f"{r['hours']:.3f}"]
                   for r in ing.iter_rows(named=True)], caption="Hours per ingest status and filter"))

    # 2. segmentation
    present = wd.methods_present()
    rep.add(Heading("Segmentation"))
    if not present:
        rep.add(Para(f"No segmentation yet: run `corpus segment {wd.root} --method ...`."))
    else:
        stats = method_stats(wd, methods)
        rep.add(Table(["method", "segments", "hours kept", "% discarded", "mean s", "min s", "max s"],
                      table14_rows(stats), caption="Table 14 layout (thesis §6.3.2)"))
        rep.add(Table(["method", "ok h", "phrase filter h", "short h", "off-speech h", "music/VAD h", "failed h",
                       "kept h", "% discarded"], funnel_rows(stats, ok_h),
                      caption="Hours dropped per rule: ok h = phrase + short + off-speech + music/VAD (+ failed) "
                              "+ kept; off-speech is segments none of whose words lay in speech, music/VAD is "
                              "audio no segment covered"))
        made = model_rows(stats)
        if made:
            rep.add(Table(["method", "aligner", "diarizer"], made,
                          caption="Models that made the word-aligned methods (segments/<method>.drops.json)"))
        png = plot_lengths(wd, files / "lengths.png", methods)
        rep.add(Image(png, "Segment length histograms per method"))
        rep.add(*segmentation_quality_blocks(wd, methods))

    # 3. shards
    if shards:
        rep.add(Heading("Shards"))
        rep.add(Table(["folder", "shards", "utterances", "hours", "length range s", "MB", "format"],
                      [shard_summary(Path(s)) for s in shards]))

    # 4. runs
    if run_dirs:
        rep.add(Heading("Training runs"))
        loaded = [(d, read_run_log(d)) for d in run_dirs]
        rep.add(Table(["run", "kind", "steps", "hours seen", "last train loss", "best validation"],
                      [run_summary(d, recs_) for d, recs_ in loaded],
                      caption="∗ / DIV: the training diverged (no step applied for too long; the thesis' "
                              "Tables 13 and 15 mark such runs alike)"
                      if any(diverged_step(r) is not None for _, r in loaded) else None))
        for i, (d, records) in enumerate(loaded):
            png = plot_run_curves(d, records, files / f"run{i}_{_safe(d.name)}.png")
            if png is not None:
                rep.add(Image(png, f"Training curves of {d}"))
        pre = [(d, r) for d, r in loaded if run_kind(r) == "pre-training"]
        if pre:
            png = plot_hours_seen(pre, files / "contrastive_vs_hours.png")
            if png is not None:
                rep.add(Image(png, "Contrastive loss against hours of audio seen"))
        ev = [row for d in run_dirs for row in eval_rows(d)]
        if ev:
            rep.add(Table(["run", "checkpoint", "set", "utterances", "greedy WER %", "greedy CER %", "LM WER %"],
                          ev, caption="`trainer evaluate` summaries"))

    text = render_markdown(rep, out.parent) if fmt == "md" else render_html(
        rep, out.parent, embed=True if embed_images is None else embed_images)
    write_text(out, text)
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "run"


# -- rendering ---------------------------------------------------------------------------


def _rel(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def render_markdown(rep: Report, base: Path) -> str:
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = [f"# {rep.title}", ""]
    for b in rep.blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            lines += [b.text, ""]
        elif isinstance(b, Table):
            if b.caption:
                lines += [f"*{b.caption}*", ""]
            lines.append("| " + " | ".join(cell(h) for h in b.headers) + " |")
            lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(b.headers))) + "|")
            lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in b.rows]
            lines.append("")
        elif isinstance(b, Image):
            lines += [f"![{b.caption}]({_rel(b.path, base)})", ""]
    return "\n".join(lines)


HTML_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px}
td{text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}
caption{caption-side:top;text-align:left;font-style:italic;padding-bottom:4px}
figure{margin:1em 0}img{max-width:100%}figcaption{font-size:90%;color:#555}"""


def render_html(rep: Report, base: Path, embed: bool = True) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             f"<title>{e(rep.title)}</title><style>{HTML_STYLE}</style></head><body>", f"<h1>{e(rep.title)}</h1>"]
    for b in rep.blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            parts.append(f"<p>{e(b.text)}</p>")
        elif isinstance(b, Table):
            parts.append("<table>")
            if b.caption:
                parts.append(f"<caption>{e(b.caption)}</caption>")
            parts.append("<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in b.headers) + "</tr></thead><tbody>")
            parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in b.rows]
            parts.append("</tbody></table>")
        elif isinstance(b, Image):
            src = ("data:image/png;base64," + base64.b64encode(b.path.read_bytes()).decode("ascii")
                   if embed else e(_rel(b.path, base)))
            parts.append(f"<figure><img src=\"{src}\" alt=\"{e(b.caption)}\">"
                         f"<figcaption>{e(b.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
