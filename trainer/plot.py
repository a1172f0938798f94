"""``trainer plot RUN_DIR``: draw the pre-training curves of ``RUN_DIR/log.jsonl`` to PNG files.

One PNG per panel group, x axis = optimizer step (and one against hours of audio seen, the
thesis' central quantity): losses, accuracy, perplexity per codebook, codeword similarity,
τ / LR / grad norm, throughput. The log is read by ``corpus_tools.runs.read_run_log`` (a torn
last line of a killed run is skipped).
"""

from __future__ import annotations

from pathlib import Path

from corpus_tools.runs import field_names, read_run_log

PANELS = {
    "losses": ["loss", "contrastive", "diversity", "l2"],
    "accuracy": ["accuracy"],
    "perplexity": ["ppl_cb*", "prob_ppl_cb*"],
    "codebook_similarity": ["cb*_sim_mean", "cb*_sim_min", "cb*_sim_max"],
    "optimisation": ["lr", "temperature", "grad_norm"],
    "throughput": ["audio_seconds_per_second", "mfu", "padding_fraction"],
}


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the PNGs (default ``RUN_DIR/plots``); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_run_log(run_dir)
    out = Path(out_dir) if out_dir else Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for panel, patterns in PANELS.items():
        keys = [k for p in patterns for k in field_names(records, p)]
        if not keys:
            continue
        fig, axes = plt.subplots(len(keys), 1, figsize=(8, 2.4 * len(keys)), sharex=True, squeeze=False)
        for ax, key in zip(axes[:, 0], keys):
            for split, style in (("train", "-"), ("val", "o-")):
                pts = [(r["step"], r[key]) for r in records if r.get("split") == split and key in r]
                if pts:
                    ax.plot(*zip(*pts), style, label=split, markersize=3)
            ax.set_ylabel(key)
            ax.grid(alpha=0.3)
            ax.legend(loc="best", fontsize=8)
        axes[-1, 0].set_xlabel("step")
        fig.tight_layout()
        path = out / f"{panel}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    # Loss against hours of audio seen (batch × steps).
    fig, ax = plt.subplots(figsize=(8, 3))
    for split, style in (("train", "-"), ("val", "o-")):
        pts = [(r["hours_seen"], r["contrastive"]) for r in records
               if r.get("split") == split and "hours_seen" in r and "contrastive" in r]
        if pts:
            ax.plot(*zip(*pts), style, label=split, markersize=3)
    ax.set_xlabel("hours of audio seen")
    ax.set_ylabel("contrastive loss (nats / masked frame)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = out / "contrastive_vs_hours.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written
