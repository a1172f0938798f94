"""`corpus report`: the page opens, shows the Table 14 table, the filters and the plots."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from corpus_tools.cli import app
from corpus_tools.manifests import RECORDINGS_SCHEMA, WorkDir, conform, write_recordings, write_segments
from corpus_tools.report import reason_category
from corpus_tools.runs import read_run_log

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
cli = CliRunner()


def _segments(rec: str, method: str, lengths: list[float]) -> pl.DataFrame:
    rows, t = [], 0.0
    for i, d in enumerate(lengths):
        rows.append(dict(segment_id=f"{rec}_{method}_{i}", recording_id=rec, path=f"/a/{rec}.wav", start=t,
                         end=t + d, duration=d, text="hallo", speaker="S0", method=method, language="nl",
                         session=rec))
        t += d + 1.0
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A work directory (3 statuses, 2 methods + drops), a pre-training and a fine-tuning run
    (log.jsonl, one resumed step logged twice, a torn last line, an eval summary), a shard index."""
    root = tmp_path_factory.mktemp("report")
    wd = WorkDir(root / "work")
    write_recordings(conform(pl.DataFrame([
        dict(recording_id="bc0", path="/a/bc0.wav", status="ok", reason=None, duration=600.0),
        dict(recording_id="bc1", path="/a/bc1.mp3", status="failed", reason="truncated: 1.0 s of audio, metadata says 9.0 s",
             duration=1.0),
        dict(recording_id="bc2", path="/a/bc2.mp4", status="filtered", reason="genre dropped: sport (matches 'sport')",
             duration=1200.0),
        dict(recording_id="bc3", path="/a/bc3.mp4", status="filtered",
             reason="duplicate of bc0 (same title, summary, date)", duration=600.0),
    ]), RECORDINGS_SCHEMA), wd.recordings)
    write_segments(_segments("bc0", "w-pp-3s", [3.5, 8.0, 12.0, 29.0]), wd.segments("w-pp-3s"))
    write_segments(_segments("bc0", "wx-diar-3s", [4.0, 15.0, 20.0]), wd.segments("wx-diar-3s"))
    (wd.segments_dir / "wx-diar-3s.drops.json").write_text(json.dumps(
        {"rules_seconds": {"phrase": 12.0, "short": 30.0}, "failed_seconds": 0.0}))

    pre = root / "runs" / "pretrain"
    pre.mkdir(parents=True)
    lines = []
    for step in range(10, 110, 10):
        lines.append(json.dumps({"split": "train", "step": step, "loss": 1000 - step, "contrastive": 4.6 - step / 100,
                                 "diversity": 0.3, "accuracy": step / 200, "ppl_cb0": 30.0, "ppl_cb1": 28.0,
                                 "lr": 1e-3, "hours_seen": step * 16 / 3600}))
        if step == 50:  # a resumed run logs step 50 again; the later record wins
            lines.append(json.dumps({"split": "train", "step": 50, "loss": 111.0, "contrastive": 4.1,
                                     "lr": 1e-3, "hours_seen": 50 * 16 / 3600}))
    lines.append(json.dumps({"split": "val", "step": 100, "loss": 880.0, "contrastive": 3.7, "accuracy": 0.4}))
    (pre / "log.jsonl").write_text("\n".join(lines) + '\n{"split": "train", "st')  # torn last line

    ft = root / "runs" / "finetune"
    (ft / "eval" / "best").mkdir(parents=True)
    (ft / "log.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"split": "train", "step": 10, "loss": 50.0, "lr": 1e-4, "frozen": True, "hours_seen": 0.01},
        {"split": "train", "step": 20, "loss": 20.0, "lr": 1e-4, "frozen": False, "hours_seen": 0.02},
        {"split": "val", "step": 20, "loss": 25.0, "wer": 0.8, "cer": 0.5}]) + "\n")
    (ft / "eval" / "best" / "summary.json").write_text(json.dumps(
        [{"set": "sample", "utterances": 4, "hours": 0.01, "greedy_wer": 0.75, "greedy_cer": 0.4}]))

    shards = root / "shards"
    shards.mkdir()
    pl.DataFrame({"name": ["shard.000000.partial.tar"], "shard_idx": [0], "partial": [True], "count": [4],
                  "hours": [0.0146], "min_duration": [3.5], "max_duration": [29.0], "num_frames": [841600],
                  "bytes": [1_700_000], "sha256": ["0" * 64], "format": ["wav"]}).write_parquet(shards / "shards.parquet")
    return {"root": root, "work": wd.root, "pre": pre, "ft": ft, "shards": shards}


class _Page(HTMLParser):
    """Collects what a browser would show: table headers/cells, image sources, headings."""

    def __init__(self):
        super().__init__()
        self.tags, self.cells, self.images, self._in = [], [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag in ("th", "td", "h1", "h2"):
            self._in = tag
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in:
            self.cells.append(data.strip())


def _report(inputs, name: str, *extra: str) -> Path:
    out = inputs["root"] / name
    res = cli.invoke(app, ["report", str(inputs["work"]), "--run", str(inputs["pre"]), "--run", str(inputs["ft"]),
                           "--shards", str(inputs["shards"]), "-o", str(out), *extra])
    assert res.exit_code == 0, res.output
    assert out.exists() and "report →" in res.output
    return out


def test_html_report_opens_with_table_filters_and_embedded_plots(inputs):
    page = _Page()
    page.feed(_report(inputs, "report.html").read_text())
    page.close()
    assert page.tags.count("table") >= 5 and "html" in page.tags
    cells = page.cells
    for head in ("method", "segments", "hours kept", "% discarded", "mean s", "min s", "max s"):
        assert head in cells
    assert "wx-diar-3s" in cells and "w-pp-3s" in cells
    # hours per filter: ingest categories and per-rule drops
    for cat in ("truncated", "genre dropped", "duplicate"):
        assert cat in cells
    assert "phrase filter h" in cells and "0.003" in cells  # 12 s of phrase-filtered audio
    # the two runs (dedupe keeps the resumed step-50 record), kinds told apart, eval results
    assert "pre-training" in cells and "fine-tuning" in cells and "WER 80.00 %" in cells and "75.00" in cells
    # plots: length histograms, two run curves, contrastive vs hours, all embedded PNGs
    assert len(page.images) == 4
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1])
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    files = sorted(p.name for p in (inputs["root"] / "report_files").iterdir())
    assert files == ["contrastive_vs_hours.png", "lengths.png", "run0_pretrain.png", "run1_finetune.png"]


def test_markdown_report_links_existing_pngs(inputs):
    out = _report(inputs, "report.md")
    text = out.read_text()
    assert "| method | segments | hours kept | % discarded | mean s | min s | max s |" in text
    assert "| wx-diar-3s | 3 | 0.011 | 93.50 | 13.00 | 4.00 | 20.00 |" in text  # 39 s of 600 s ok audio
    links = [line.split("](", 1)[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert len(links) == 4
    for link in links:
        png = out.parent / link
        assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 5000


def test_html_can_link_instead_of_embed(inputs):
    out = _report(inputs, "linked.html", "--link")
    page = _Page()
    page.feed(out.read_text())
    assert page.images and all((out.parent / src).is_file() for src in page.images)


def test_report_without_runs_or_segments(tmp_path, inputs):
    wd = tmp_path / "w"
    wd.mkdir()
    (wd / "recordings.parquet").write_bytes((inputs["work"] / "recordings.parquet").read_bytes())
    res = cli.invoke(app, ["report", str(wd), "-o", str(tmp_path / "r.md")])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "r.md").read_text()
    assert "No segmentation yet" in text and "Training runs" not in text


@pytest.mark.parametrize("args, message", [
    (["-o", "x.pdf"], ".md or .html"),
    (["--run", "/nonexistent-run"], "log.jsonl"),
])
def test_bad_input_is_a_one_line_error(inputs, tmp_path, args, message):
    res = cli.invoke(app, ["report", str(inputs["work"]), *args] + ([] if "-o" in args else ["-o", str(tmp_path / "r.md")]))
    assert res.exit_code != 0 and message in res.output
    assert "Traceback" not in res.output


def test_missing_workdir_is_a_clear_error(tmp_path):
    res = cli.invoke(app, ["report", str(tmp_path / "nope"), "-o", str(tmp_path / "r.html")])
    assert res.exit_code != 0 and "recordings.parquet not found" in res.output


def test_reason_categories_and_log_reading(inputs):
    assert reason_category("genre dropped: sport (matches 'sport')") == "genre dropped"
    assert reason_category("duplicate of bc000 (same title, summary, date)") == "duplicate"
    assert reason_category("longer than 3 h (3.20 h)") == "longer than 3 h"
    assert reason_category(None) == ""
    recs = read_run_log(inputs["pre"])
    train = [r for r in recs if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(10, 110, 10))  # step 50 once, torn line skipped
    assert next(r for r in train if r["step"] == 50)["loss"] == 111.0
    assert recs[-1]["split"] == "val"


def test_trainer_plot_reads_a_log_with_a_torn_last_line(inputs, tmp_path):
    """`trainer plot` and `corpus report` read log.jsonl alike: a killed run's torn last line is skipped."""
    from trainer.cli import app as trainer_app

    res = cli.invoke(trainer_app, ["plot", str(inputs["pre"]), "-o", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    pngs = sorted(tmp_path.joinpath("plots").glob("*.png"))
    assert {p.name for p in pngs} >= {"losses.png", "contrastive_vs_hours.png"}
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)


def test_the_report_reads_run_logs_without_torch():
    """Reading JSON lines must not cost a torch import: `corpus report` stays light."""
    import subprocess
    import sys

    code = "import sys, corpus_tools.report; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
