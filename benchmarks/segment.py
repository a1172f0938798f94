"""Cost of `corpus segment --method all` against one ASR pass and against each method alone.

Runs in one process on a small sample archive with the offline models (Whisper base):

* ``asr``      one Whisper pass (``w-raw`` from scratch) — the unit of cost;
* ``all``      ``--method all`` from scratch: every stage once, every method derived;
* ``each``     every method from scratch in its own work directory (what a tool without
               stage caching pays).

Target: all ten methods for ≤ 2.2× the cost of one ASR pass. Models are loaded
once before timing (they are cached per process, as in a real run), so the numbers compare
inference, not loading. Also prints the real-time factor of each stage.

    python benchmarks/segment.py [--broadcasts 1] [--device cpu] [--whisper-model base]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run(work: Path, methods: str, args) -> float:
    from typer.testing import CliRunner

    from corpus_tools.cli import app

    t0 = time.perf_counter()
    res = CliRunner().invoke(app, ["segment", str(work), "--method", methods, "--whisper-model", args.whisper_model,
                                   "--models-dir", str(args.models_dir), "--device", args.device,
                                   "--beam-size", str(args.beam_size), "--batch-size", str(args.batch_size)])
    if res.exit_code != 0:
        raise SystemExit(res.output)
    return time.perf_counter() - t0


def fresh(base: Path, archive: Path, name: str) -> Path:
    from typer.testing import CliRunner

    from corpus_tools.cli import app

    work = base / name
    shutil.rmtree(work, ignore_errors=True)
    res = CliRunner().invoke(app, ["ingest", str(archive), "-o", str(work)])
    assert res.exit_code == 0, res.output
    return work


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broadcasts", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--whisper-model", default="base")
    ap.add_argument("--beam-size", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--models-dir", type=Path, default=None)
    ap.add_argument("--skip-each", action="store_true", help="skip the (slow) every-method-from-scratch run")
    args = ap.parse_args()

    from corpus_tools.models import prepare_offline
    from corpus_tools.samples import build_sample_archive
    from corpus_tools.segment.runner import METHODS

    base = Path(tempfile.mkdtemp(prefix="bench-segment-"))
    if args.models_dir is None:
        args.models_dir = base / "models"
        prepare_offline(args.models_dir)
    archive = build_sample_archive(base / "archive", n_broadcasts=args.broadcasts)
    audio_s = sum(float(__import__("soundfile").info(str(p)).duration) for p in archive.glob("*.wav")) or None

    run(fresh(base, archive, "warmup"), "all", args)  # load every model once (process cache)

    t_asr = run(fresh(base, archive, "asr"), "w-raw", args)
    t_all = run(fresh(base, archive, "all"), "all", args)
    print(f"audio: {audio_s or 0:.0f} s in {args.broadcasts} broadcast(s); device {args.device}; "
          f"whisper {args.whisper_model}, beam {args.beam_size}")
    print(f"one ASR pass (w-raw)      {t_asr:8.1f} s" + (f"   {audio_s / t_asr:6.1f}× real time" if audio_s else ""))
    print(f"--method all (10 methods) {t_all:8.1f} s   ratio to one ASR pass: {t_all / t_asr:.2f}× (target ≤ 2.2×)")
    if not args.skip_each:
        per = {}
        for m in METHODS:
            per[m] = run(fresh(base, archive, f"each-{m}"), m, args)
            rtf = f"{audio_s / per[m]:7.1f}× real time" if audio_s and per[m] > 0 else ""
            print(f"  {m:11s} from scratch {per[m]:7.1f} s  {rtf}")
        t_each = sum(per.values())
        print(f"each method from scratch  {t_each:8.1f} s   all-at-once saves {t_each / t_all:.2f}×")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
