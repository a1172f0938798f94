"""The defaults the thesis fixes, each pinned to its value (thesis ch. 5 and 6).

Optimisers are read back from the checkpoints that `pretrain` / `finetune` write, decoding
defaults from what reaches the decoder, so a default changed anywhere on the way shows up.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from trainer.checkpoint import load_checkpoint
from trainer.model import Wav2Vec2Config, Wav2Vec2ForPreTraining, available_configs, load_config

torch.set_num_threads(1)
SR = 16_000


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
    """Tiny train / validation shard sets of 1–2 s tone-and-noise clips with transcripts."""
    import soundfile as sf

    from corpus_tools.shards import write_shards

    root = tmp_path_factory.mktemp("default-shards")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(14):
        seconds = 1.0 + (i % 5) * 0.25
        t = np.arange(int(seconds * SR)) / SR
        audio = 0.3 * np.sin(2 * np.pi * (120 + 15 * i) * t) + 0.05 * rng.standard_normal(t.size)
        path = root / f"u{i:02d}.wav"
        sf.write(path, audio.astype(np.float32), SR)
        rows.append(dict(segment_id=f"u{i:02d}", recording_id=f"r{i % 3}", path=str(path), start=0.0, end=seconds,
                         duration=seconds, text="ja nee" if i % 2 else "goed zo", speaker=f"s{i % 3}",
                         method="test", language="nl", session=f"r{i % 3}"))
    df = pl.DataFrame(rows)
    write_shards(df[:10], root / "train", samples_per_shard=16, progress=False)
    write_shards(df[10:], root / "val", samples_per_shard=16, progress=False)
    return {"train": str(root / "train"), "val": str(root / "val")}


def _groups(run_dir: Path, step: int = 1) -> list[dict]:
    from trainer.checkpoint import step_checkpoint_path

    return load_checkpoint(step_checkpoint_path(run_dir, step))["optimizer"]["param_groups"]


# -- pre-training optimiser ----------------------------------------------------------------------


def test_pretraining_adamw_betas_and_weight_decay_as_trained(shards, tmp_path):
    """AdamW β 0.9/0.98, ε 1e-6, weight decay 0.01 (thesis §5.3.1) from the config, none on 1-D parameters."""
    from trainer.pretrain import PretrainArgs, pretrain

    out = pretrain(PretrainArgs(shards=shards["train"], out=str(tmp_path / "run"), config="tiny", steps=1,
                                batch_seconds=4.0, ckpt_every=1, log_every=1, num_workers=0, quiet=True))
    groups = _groups(tmp_path / "run")
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    for g in groups:
        assert tuple(g["betas"]) == (0.9, 0.98) and g["eps"] == 1e-6
        assert g.get("decoupled_weight_decay", True), "AdamW (decoupled weight decay), not Adam"
    model = out["model"]
    n_decay, n_plain = len(groups[0]["params"]), len(groups[1]["params"])
    assert n_decay == sum(p.dim() >= 2 for p in model.parameters())
    assert n_plain == sum(p.dim() < 2 for p in model.parameters())


def test_pretraining_weight_decay_skips_biases_norms_and_the_mask_vector():
    from trainer.pretrain import make_optimizer

    model = Wav2Vec2ForPreTraining(load_config("tiny"))
    opt = make_optimizer(model, 1e-3, 0.01, torch.device("cpu"))
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(decay_of) == len(names), "every parameter is optimised"
    for name, p in names.items():
        plain = name.endswith(".bias") or ".norm." in name or "_norm." in name or name.endswith("mask_embedding")
        assert decay_of[id(p)] == (0.0 if plain else 0.01), name
    # The decayed ones include the CNN kernels, the transformer matrices and the codebooks.
    assert decay_of[id(names["wav2vec2.feature_encoder.layers.0.conv.weight"])] == 0.01
    assert decay_of[id(names["quantizer.codevectors"])] == 0.01


def test_every_pretraining_config_defaults_to_weight_decay_0_01(tmp_path):
    from trainer.pretrain import PretrainArgs, resolve_settings

    for name in available_configs():
        _, train = resolve_settings(PretrainArgs(shards="x", out="y", config=name))
        assert train["weight_decay"] == 0.01, name
    bare = tmp_path / "bare.yaml"
    bare.write_text("model: {}\n")
    assert resolve_settings(PretrainArgs(shards="x", out="y", config=str(bare)))[1]["weight_decay"] == 0.01


# -- fine-tuning optimiser -----------------------------------------------------------------------


def test_finetuning_adam_betas_and_no_weight_decay_as_trained(shards, tmp_path):
    """Adam β 0.9/0.98, ε 1e-8, no weight decay (thesis §5.2.4, §6.3.1)."""
    from trainer.finetune import FinetuneArgs, finetune

    finetune(FinetuneArgs(train=shards["train"], out=str(tmp_path / "ft"), config="tiny", steps=1, batch_seconds=4.0,
                          ckpt_every=1, log_every=1, num_workers=0, quiet=True))
    groups = _groups(tmp_path / "ft")
    assert groups
    for g in groups:
        assert tuple(g["betas"]) == (0.9, 0.98) and g["eps"] == 1e-8 and g["weight_decay"] == 0.0


# -- model and loss defaults ---------------------------------------------------------------------


def test_contrastive_temperature_and_loss_weights():
    for cfg in (Wav2Vec2Config(), load_config("base")):
        assert cfg.logit_temp == 0.1 and cfg.diversity_weight == 0.1 and cfg.l2_weight == 10.0
    from trainer.losses import contrastive_logits

    c = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    logits = contrastive_logits(c, c, torch.tensor([[1], [0]]))  # the default τ_c
    assert torch.allclose(logits, torch.tensor([[10.0, 0.0], [10.0, 0.0]]))  # cosine / 0.1


def test_tanh_gelu_and_cnn_gradient_scale_are_config_defaults():
    cfg = Wav2Vec2Config()
    assert cfg.activation == "gelu_tanh" and cfg.conv_activation is None and cfg.gradient_scale == 0.1
    base = load_config("base")
    assert (base.activation, base.conv_activation, base.gradient_scale) == ("gelu_tanh", None, 0.1)
    # The model built from the defaults applies tanh GELU in the CNN, the positional conv and the FFN.
    model = Wav2Vec2ForPreTraining(load_config("tiny"))
    x = torch.linspace(-4, 4, 101)
    tanh, exact = F.gelu(x, approximate="tanh"), F.gelu(x)
    assert not torch.allclose(tanh, exact, atol=1e-5)
    acts = [model.wav2vec2.feature_encoder.layers[0].act, model.wav2vec2.context.pos_conv.act,
            model.wav2vec2.context.layers[0].ffn.act]
    for act in acts:
        assert torch.equal(act(x), tanh)


def test_quantizer_temperature_schedule_and_base_codebooks():
    base = load_config("base")
    assert base.temperature == [2.0, 0.5, 0.999995] == Wav2Vec2Config().temperature
    assert (base.codebooks, base.codebook_entries, base.codevector_dim // base.codebooks) == (2, 320, 128)
    model = Wav2Vec2ForPreTraining(load_config("tiny"))
    q = model.quantizer
    q.set_step(0)
    assert float(q.temperature) == pytest.approx(2.0)
    q.set_step(100_000)
    assert float(q.temperature) == pytest.approx(2.0 * 0.999995 ** 100_000, rel=1e-6)
    q.set_step(400_000)  # 2 · 0.999995^400k ≈ 0.27: held at the floor
    assert float(q.temperature) == pytest.approx(0.5)


# -- LM decoding defaults ------------------------------------------------------------------------


def test_lm_decoding_defaults_reach_the_decoder(tmp_path, monkeypatch):
    """Beam size and threshold 50, LM weight 2, word insertion score 0 (thesis §5.3.2), from
    `evaluate` to flashlight."""
    import torchaudio.models.decoder as fl

    from trainer import decode
    from trainer.text import VOCAB

    got = {}
    monkeypatch.setattr(fl, "ctc_decoder", lambda **kw: got.update(kw))
    arpa = tmp_path / "lm.arpa"
    arpa.write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-1.0 <s>\n-1.0 </s>\n-1.0 ja\n\n\\end\\\n")

    class NoModel(torch.nn.Module):
        vocab = list(VOCAB)

    assert decode.evaluate(None, [], lm=arpa, model=NoModel(), device="cpu", progress=False) == []
    assert (got["beam_size"], got["lm_weight"], got["word_score"]) == (50, 2.0, 0.0)
    assert got["beam_threshold"] == 50.0  # "a beam size and threshold of 50", not torchaudio's default
    for fn in (decode.BeamSearchDecoder.__init__, decode.evaluate):
        p = inspect.signature(fn).parameters
        assert (p["beam_size"].default, p["lm_weight"].default, p["word_score"].default) == (50, 2.0, 0.0)


def test_trainer_evaluate_cli_decoding_defaults(shards, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from trainer import decode
    from trainer.cli import app

    seen = {}
    monkeypatch.setattr(decode, "evaluate", lambda *a, **kw: seen.update(kw) or [])
    monkeypatch.setattr(decode, "summary_markdown", lambda rows: "")
    ckpt = tmp_path / "ft.pt"
    ckpt.write_bytes(b"not read: evaluate is replaced")
    res = CliRunner().invoke(app, ["evaluate", "--ckpt", str(ckpt), "--shards", shards["val"]])
    assert res.exit_code == 0, res.output
    assert (seen["beam_size"], seen["lm_weight"], seen["word_score"]) == (50, 2.0, 0.0)


# -- ingest and simulation -----------------------------------------------------------------------


def test_a_broadcast_of_exactly_three_hours_is_kept():
    """"Longer than three hours" (thesis §6.2.3): 3 h is kept, 3 h + 1 s is not."""
    from corpus_tools import ingest as ing
    from corpus_tools.commands.ingest import ingest as ingest_command

    assert ing.MAX_DURATION_S == 3 * 3600.0
    assert inspect.signature(ingest_command).parameters["max_hours"].default == 3.0
    durations = [3 * 3600.0, 3 * 3600.0 + 1.0, 3 * 3600.0 - 1.0, 3 * 3600.0 + 0.01]
    df = pl.DataFrame({"recording_id": [f"r{i}" for i in range(4)], "status": ["ok"] * 4, "reason": [None] * 4,
                       "duration": durations}, schema_overrides={"reason": pl.String})
    out = ing.apply_filters(df, None)
    assert out["status"].to_list() == ["ok", "filtered", "ok", "filtered"]
    assert "longer than 3 h" in out["reason"][1]


def test_snr_range_is_0_to_15_db():
    """Mixing SNR uniform in [0, 15] dB (thesis §6.2.2), from manifests/simulation_conditions.yaml."""
    from corpus_tools.simulate import CONDITIONS_FILE, load_settings

    assert CONDITIONS_FILE.parent.name == "manifests"
    lo, hi = load_settings().snr_db
    assert lo == 0.0 and hi == 15.0


def test_validation_batches_are_never_transformed(shards, tmp_path, monkeypatch):
    """The online simulation degrades training batches only: every validation batch is unmarked."""
    from trainer import pretrain as pt

    def mark(utts, rng):
        for u in utts:
            u.meta = {**u.meta, "simulated": True}
        return utts

    val_marks = []
    real_validate = pt.validate

    def spy(model, loader, *a, **kw):
        val_marks.extend(bool(m.get("simulated")) for batch in loader for m in batch.meta)
        return real_validate(model, loader, *a, **kw)

    monkeypatch.setattr(pt, "validate", spy)
    calls = []
    pt.pretrain(pt.PretrainArgs(shards=shards["train"], val_shards=shards["val"], out=str(tmp_path / "run"),
                                config="tiny", steps=2, batch_seconds=4.0, val_every=1, log_every=1, num_workers=0,
                                quiet=True, transform=lambda utts, rng: calls.append(len(utts)) or mark(utts, rng)))
    assert len(calls) == 2, "the transform ran on each training batch"
    assert len(val_marks) == 2 * 4 and not any(val_marks), "a validation utterance went through the transform"
