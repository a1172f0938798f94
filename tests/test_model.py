"""The wav2vec 2.0 model: parity with Hugging Face, padding, masking, quantizer, losses, configs, interop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.components import FeatureEncoder
from trainer.losses import LossWeights, combine_losses, contrastive_logits, diversity_loss, l2_penalty, sample_negatives
from trainer.masking import span_mask
from trainer.model import (
    Wav2Vec2Config,
    Wav2Vec2ForPreTraining,
    available_configs,
    build_model,
    count_parameters,
    load_config,
)
from trainer.schedules import Schedule, lr_heuristic

torch.set_num_threads(1)


def tiny_cfg(**kw) -> Wav2Vec2Config:
    base = dict(name="t", conv_channels=[16] * 7, d_model=32, layers=2, heads=4, ffn_dim=48, pos_conv_kernel=16,
                pos_conv_groups=4, codebooks=2, codebook_entries=12, codevector_dim=16, final_dim=8)
    base.update(kw)
    return Wav2Vec2Config(**base)


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial values everywhere (LayerNorm gains, biases), so a wrong mapping cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g) if name.endswith("weight")
                        else 0.1 * torch.randn(p.shape, generator=g))


def speech_like(batch: int, samples: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    tone = torch.sin(2 * math.pi * (150 + 50 * torch.rand(batch, 1, generator=g)) * t)
    return 0.3 * tone + 0.05 * torch.randn(batch, samples, generator=g)


# -- parity with Hugging Face transformers --------------------------------------------------


@pytest.mark.parametrize("direction", ["ours_to_hf", "hf_to_ours"])
def test_encoder_matches_hf_wav2vec2(direction):
    from transformers import Wav2Vec2ForPreTraining as HFPre

    from trainer.hf import state_dict_from_hf, state_dict_to_hf, to_hf_config

    cfg = tiny_cfg(conv_padding="none", activation="gelu")
    hf_cfg = to_hf_config(cfg)
    assert hf_cfg.feat_extract_norm == "group" and hf_cfg.do_stable_layer_norm is False
    torch.manual_seed(0)
    ours, hf = Wav2Vec2ForPreTraining(cfg).eval(), HFPre(hf_cfg).eval()
    if direction == "ours_to_hf":
        randomise(ours)
        hf.load_state_dict(state_dict_to_hf(ours.state_dict(), cfg), strict=True)
    else:
        randomise(hf)
        missing, unexpected = ours.load_state_dict(state_dict_from_hf(hf.state_dict(), cfg), strict=False)
        assert missing == ["quantizer.temperature"] and not unexpected
    audio = speech_like(2, 16000)
    with torch.no_grad():
        mine = ours.wav2vec2(audio)
        theirs = hf.wav2vec2(audio)
        assert mine["context"].shape == theirs.last_hidden_state.shape
        assert torch.allclose(mine["context"], theirs.last_hidden_state, atol=1e-5, rtol=0)
        assert torch.allclose(mine["normed"], theirs.extract_features, atol=1e-5, rtol=0)
        # Same lengths given explicitly (no padding) takes the same path.
        again = ours.wav2vec2(audio, torch.tensor([16000, 16000]))["context"]
        assert torch.allclose(again, mine["context"], atol=1e-6)
        # The quantizer maps to the same codevectors (eval: argmax).
        q, _ = ours.quantizer(mine["normed"].reshape(-1, cfg.conv_channels[-1]))
        hq, _ = hf.quantizer(theirs.extract_features)
        assert torch.allclose(q, hq.reshape(q.shape), atol=1e-6)


def _swap_ffn_activation(model: Wav2Vec2ForPreTraining, fn) -> None:
    """Give the FFN activation ``fn``, and FFN weights large enough that the GELU variants differ
    visibly (at init scale its inputs stay near 0, where tanh GELU equals exact GELU to 1e-6)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.wav2vec2.context.layers:
            layer.ffn.act = fn
            for fc in (layer.ffn.fc1, layer.ffn.fc2):
                fc.weight.copy_(0.5 * torch.randn(fc.weight.shape, generator=g))


# fairseq's activation_fn → (our activation, the function fairseq's FFN applies). fairseq's CNN and
# positional convolution always use exact GELU (nn.GELU), whatever activation_fn says.
FAIRSEQ_ACTIVATIONS = {
    "gelu": ("gelu", F.gelu),
    "gelu_accurate": ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh")),
    "relu": ("relu", F.relu),
}


@pytest.mark.parametrize("activation_fn", sorted(FAIRSEQ_ACTIVATIONS))
def test_fairseq_import_honours_activation_fn(tmp_path, activation_fn):
    from trainer.hf import load_pretrained

    ours, fn = FAIRSEQ_ACTIVATIONS[activation_fn]
    torch.manual_seed(0)
    ref = Wav2Vec2ForPreTraining(tiny_cfg(conv_padding="none", activation="gelu")).eval()
    randomise(ref)
    _swap_ffn_activation(ref, fn)  # the fairseq model: exact-GELU convolutions, activation_fn in the FFN
    torch.save({"cfg": {"model": {**FAIRSEQ_TINY, "activation_fn": activation_fn}}, "model": to_fairseq_state(ref)},
               tmp_path / "fairseq.pt")
    got = load_pretrained(tmp_path / "fairseq.pt").eval()
    audio = speech_like(1, 9000)
    with torch.no_grad():
        assert torch.allclose(got.wav2vec2(audio)["context"], ref.wav2vec2(audio)["context"], atol=1e-6)
    assert got.cfg.activation == ours and got.cfg.conv_activation in (None, "gelu")
    # The imported config alone rebuilds the same model (fresh weights, then the same state).
    again = Wav2Vec2ForPreTraining(Wav2Vec2Config.from_dict(got.cfg.to_dict())).eval()
    again.load_state_dict(got.state_dict())
    with torch.no_grad():
        assert torch.equal(again.wav2vec2(audio)["context"], got.wav2vec2(audio)["context"])


@pytest.mark.parametrize("activation_fn", ["swish", "tanh", "linear", "gelu_new"])
def test_fairseq_import_refuses_an_activation_it_cannot_represent(tmp_path, activation_fn):
    from trainer.hf import from_fairseq_config

    with pytest.raises(ValueError, match=f"activation_fn.*{activation_fn}"):
        from_fairseq_config({**FAIRSEQ_TINY, "activation_fn": activation_fn})


def test_relu_ffn_exports_to_hf_with_equal_outputs():
    from transformers import Wav2Vec2ForPreTraining as HFPre

    from trainer.hf import from_hf_config, state_dict_to_hf, to_hf_config

    cfg = tiny_cfg(conv_padding="none", activation="relu", conv_activation="gelu")
    hf_cfg = to_hf_config(cfg)
    assert (hf_cfg.hidden_act, hf_cfg.feat_extract_activation) == ("relu", "gelu")
    back = from_hf_config(hf_cfg)
    assert (back.activation, back.conv_activation) == ("relu", "gelu")
    torch.manual_seed(0)
    ours = Wav2Vec2ForPreTraining(cfg).eval()
    randomise(ours)
    hf = HFPre(hf_cfg).eval()
    hf.load_state_dict(state_dict_to_hf(ours.state_dict(), cfg), strict=True)
    audio = speech_like(1, 9000)
    with torch.no_grad():
        assert torch.allclose(ours.wav2vec2(audio)["context"], hf.wav2vec2(audio).last_hidden_state, atol=1e-5)


# -- the feature encoder ----------------------------------------------------------------


def test_feature_encoder_frame_rates():
    cfg = tiny_cfg()
    for padding, expected in (("50hz", lambda n: n // 320), ("none", lambda n: (n - 400) // 320 + 1)):
        enc = FeatureEncoder(cfg.conv_channels, cfg.conv_kernels, cfg.conv_strides, padding)
        for n in (400, 3200, 16000, 16000 * 3 + 123):
            out, lens = enc(torch.zeros(1, n), torch.tensor([n]))
            assert out.shape[1] == expected(n) == int(lens[0]), (padding, n)


@pytest.mark.parametrize("padding", ["50hz", "none"])
def test_padding_does_not_leak(padding):
    """A padded utterance gives the same frames as the utterance alone (GroupNorm over valid frames)."""
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(tiny_cfg(conv_padding=padding)).eval()
    randomise(model)
    long, short = speech_like(1, 24000, seed=1), speech_like(1, 13000, seed=2)
    batch = torch.zeros(2, 24000)
    batch[0], batch[1, :13000] = long[0], short[0]
    batch[1, 13000:] = 5.0  # garbage in the padding must not matter either
    with torch.no_grad():
        both = model.wav2vec2(batch, torch.tensor([24000, 13000]))
        alone = model.wav2vec2(short, torch.tensor([13000]))
    n = int(both["frame_lengths"][1])
    assert n == alone["context"].shape[1]
    assert torch.allclose(both["features"][1, :n], alone["features"][0], atol=1e-5)
    assert torch.allclose(both["context"][1, :n], alone["context"][0], atol=1e-5)
    assert both["frame_mask"][1].sum() == n and not both["frame_mask"][1, n:].any()


def test_gradient_scale_on_the_cnn():
    cfg = tiny_cfg()
    audio = speech_like(2, 8000)
    grads = {}
    for scale in (1.0, 0.1):
        torch.manual_seed(0)
        model = Wav2Vec2ForPreTraining(Wav2Vec2Config(**{**cfg.to_dict(), "gradient_scale": scale}))
        model.wav2vec2(audio)["context"].pow(2).sum().backward()
        grads[scale] = model.wav2vec2.feature_encoder.layers[0].conv.weight.grad.clone()
        head = model.wav2vec2.feature_projection.linear.weight.grad.clone()
        grads[f"head{scale}"] = head
    assert torch.allclose(grads[0.1], 0.1 * grads[1.0], rtol=1e-4, atol=1e-9)
    assert torch.allclose(grads["head0.1"], grads["head1.0"])


# -- masking ----------------------------------------------------------------------------


def test_span_mask_counts_and_padding():
    lengths = torch.tensor([500, 237, 19, 9])
    gen = torch.Generator().manual_seed(0)
    mask = span_mask(lengths, 500, 0.5, 10, generator=gen)
    assert mask.shape == (4, 500)
    for b, n in enumerate(lengths.tolist()):
        assert not mask[b, n:].any(), "padding frames must never be masked"
        starts = mask[b, :n].float()
        # Every masked run is a union of 10-frame spans; the number of spans is floor(n * 0.5 / 10).
        n_spans = n * 5 // 100
        if n_spans == 0:
            assert not mask[b].any()
        else:
            assert 10 <= int(starts.sum()) <= 10 * n_spans
    # About 40 % masked for long utterances (1 - 0.95^10 ≈ 0.40 with overlaps); deterministic per generator.
    big = span_mask(torch.full((64,), 1000), 1000, generator=torch.Generator().manual_seed(1))
    assert 0.33 < big.float().mean() < 0.46
    again = span_mask(torch.full((64,), 1000), 1000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(big, again)


def test_span_mask_starts_are_distinct_and_spans_are_whole():
    gen = torch.Generator().manual_seed(3)
    mask = span_mask(torch.tensor([200]), 200, 0.5, 10, generator=gen)[0].int()
    # Each maximal masked run has length >= 10 (spans are whole; overlapping spans merge).
    runs, cur = [], 0
    for v in mask.tolist() + [0]:
        if v:
            cur += 1
        elif cur:
            runs.append(cur)
            cur = 0
    assert runs and min(runs) >= 10


# -- negatives and losses ---------------------------------------------------------------


def test_sample_negatives_same_utterance_never_self():
    rows = torch.tensor([0] * 5 + [1] * 1 + [2] * 30)
    negs, usable = sample_negatives(rows, 100, generator=torch.Generator().manual_seed(0))
    assert negs.shape == (36, 100)
    assert usable.tolist() == [True] * 5 + [False] + [True] * 30
    idx = torch.arange(36)[:, None]
    assert not (negs[usable] == idx[usable]).any(), "a frame is never its own distractor"
    assert torch.equal(rows[negs[usable]], rows[usable][:, None].expand(-1, 100)), "same utterance only"
    # Uniform over the 29 other frames of utterance 2: with many draws every one shows up.
    many, _ = sample_negatives(rows, 2000, generator=torch.Generator().manual_seed(1))
    assert set(many[10].tolist()) == set(range(6, 36)) - {10}


def test_contrastive_loss_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    context, targets = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    targets[3] = targets[1]  # a distractor identical to the positive must be excluded
    negatives = torch.tensor([[1, 2, 3], [0, 3, 2], [0, 1, 3], [0, 1, 2]])
    logits = contrastive_logits(context, targets, negatives, logit_temp=0.1)
    ce = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long), reduction="none")
    for t in range(4):
        def cos(a, b):
            return float(a @ b / (a.norm() * b.norm()))
        pos = math.exp(cos(context[t], targets[t]) / 0.1)
        denom = pos + sum(math.exp(cos(context[t], targets[d]) / 0.1) for d in negatives[t].tolist()
                          if not torch.equal(targets[d], targets[t]))
        assert abs(float(ce[t]) - (-math.log(pos / denom))) < 1e-4


def test_diversity_l2_and_total_match_direct_computation():
    probs = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]])
    ppl = torch.exp(-(probs * torch.log(probs + 1e-7)).sum(-1))
    assert torch.allclose(ppl[0], torch.tensor(4.0), atol=1e-4)
    direct_div = (4 - 4.0) + (4 - math.exp(-(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1))))
    assert abs(float(diversity_loss(ppl, 4)) - direct_div) < 1e-4
    feats = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False]])
    assert abs(float(l2_penalty(feats, mask)) - (1 + 4 + 9 + 16) / 4) < 1e-6
    ce = torch.tensor([1.0, 2.0, 3.0])
    l2 = l2_penalty(feats, mask)
    s = combine_losses(ce, ppl, l2, groups=2, entries=4, weights=LossWeights(0.1, 10.0, "sum"))
    assert abs(float(s["loss"]) - (6.0 + 0.1 * direct_div + 10 * 7.5)) < 1e-4
    m = combine_losses(ce, ppl, l2, groups=2, entries=4, weights=LossWeights(0.1, 10.0, "mean"))
    assert abs(float(m["loss"]) - (2.0 + 0.1 * direct_div / 8 + 10 * 7.5)) < 1e-4
    assert float(s["contrastive"]) == float(m["contrastive"]) == 2.0


def test_model_loss_is_the_weighted_sum_of_its_terms():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = Wav2Vec2ForPreTraining(cfg)
    audio, lengths = speech_like(3, 32000), torch.tensor([32000, 30000, 25000])
    out = model(audio, lengths, generator=torch.Generator().manual_seed(0))
    n = float(out["masked_frames"])
    expected = (out["contrastive"] * n + 0.1 * out["diversity"] * cfg.codebooks * cfg.codebook_entries
                + 10 * out["l2"])
    assert torch.allclose(out["loss"], expected, rtol=1e-5)
    assert out["prob_perplexity"].shape == (2,) and out["code_perplexity"].shape == (2,)
    assert 0 <= float(out["accuracy"]) <= 1 and n > 0
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters()), "every parameter gets a gradient (DDP)"
    # With a fixed generator the eval-mode forward is deterministic.
    model.eval()
    a = model(audio, lengths, generator=torch.Generator().manual_seed(5))["loss"]
    b = model(audio, lengths, generator=torch.Generator().manual_seed(5))["loss"]
    assert float(a) == float(b)


# -- quantizer --------------------------------------------------------------------------


def test_gumbel_temperature_schedule_is_a_checkpointed_buffer():
    model = Wav2Vec2ForPreTraining(tiny_cfg())
    q = model.quantizer
    assert "quantizer.temperature" in model.state_dict()
    q.set_step(0)
    assert float(q.temperature) == 2.0
    q.set_step(1000)
    assert abs(float(q.temperature) - 2.0 * 0.999995 ** 1000) < 1e-6
    q.set_step(10_000_000)
    assert float(q.temperature) == 0.5


def test_quantizer_picks_one_codeword_per_codebook():
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(tiny_cfg())
    q = model.quantizer.train()
    x = torch.randn(50, 16, requires_grad=True)
    out, stats = q(x)
    cv = q.codevectors.detach()  # [G, V, d]
    for g in range(2):
        part = out[:, g * 8:(g + 1) * 8].detach()
        dist = (part[:, None, :] - cv[g][None]).abs().sum(-1).min(dim=1).values
        assert torch.all(dist < 1e-5), "forward output is exactly one codeword per codebook"
    out.sum().backward()
    assert q.weight_proj.weight.grad.abs().sum() > 0, "straight-through gradient reaches the classifier"
    assert torch.all(stats["prob_perplexity"] <= 12) and torch.all(stats["code_perplexity"] >= 1)


# -- configs and schedules --------------------------------------------------------------


def test_named_configs_match_the_seed_sizes():
    names = set(available_configs())
    assert {"tiny", "base", "large", "slim", "slim-30", "slim-50", "slim-70", "slim-200", "small"} <= names
    # Seed 003, Table 4 (wav2vec 2.0 column), in millions of parameters.
    expected = {"base": 95.0, "large": 317.4, "slim": 20.4, "slim-30": 6.2, "slim-50": 10.3, "slim-70": 14.4,
                "slim-200": 40.4, "small": 21.3}
    for name, millions in expected.items():
        with torch.device("meta"):
            n = count_parameters(build_model(name))
        assert abs(n / 1e6 - millions) < 0.06, (name, n)
    tiny = load_config("tiny")
    assert tiny.codebooks == 2 and tiny.layers >= 2 and not tiny.norm_first
    base = load_config("base")
    assert (base.conv_padding, base.codebook_entries, base.mask_prob, base.mask_length) == ("50hz", 320, 0.5, 10)
    assert base.temperature == [2.0, 0.5, 0.999995] and base.num_negatives == 100
    with pytest.raises(FileNotFoundError, match="bundled configs"):
        load_config("no-such-config")
    with pytest.raises(ValueError, match="unknown model config keys"):
        load_config("tiny", not_a_key=1)


def test_schedules_and_lr_heuristics():
    assert abs(lr_heuristic(87.5, "sqrt") - 6.04e-5) < 1e-7
    assert abs(lr_heuristic(87.5, "linear") - 7.29e-6) < 1e-8
    assert abs(lr_heuristic(150, "sqrt") - 7.91e-5) < 1e-7
    assert lr_heuristic(20 * 60, "const") == 5e-4
    cyc = Schedule("cyclic", 1e-3, 400_000)
    assert cyc(0) == pytest.approx(1e-5) and cyc(25_000) == pytest.approx(1e-3)
    assert cyc(50_000) == pytest.approx(1e-5) and cyc(12_500) == pytest.approx((1e-5 + 1e-3) / 2)
    tri = Schedule("tri_stage", 1e-3, 1000)
    assert tri(0) == pytest.approx(1e-5) and tri(100) == pytest.approx(1e-3) and tri(499) == pytest.approx(1e-3)
    assert tri(1000) == pytest.approx(5e-5)
    two = Schedule("two_stage", 1e-3, 1000)
    assert two(0) == pytest.approx(1e-6) and two(100) == pytest.approx(1e-3) and two(1000) == pytest.approx(1e-5)
    assert two(550) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    with pytest.raises(ValueError):
        Schedule("linear-ish", 1e-3, 10)


# -- interop ------------------------------------------------------------------------------


def _save_ckpt(model, path):
    from trainer.checkpoint import atomic_save

    atomic_save({"config": model.cfg.to_dict(), "model": model.state_dict()}, path)


def test_export_hf_folder_round_trip(tmp_path):
    from transformers import Wav2Vec2ForPreTraining as HFPre, Wav2Vec2Model

    from trainer.checkpoint import load_model
    from trainer.hf import export_hf, load_pretrained

    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(tiny_cfg(conv_padding="none", activation="gelu")).eval()
    randomise(model)
    _save_ckpt(model, tmp_path / "ckpt.pt")
    assert torch.equal(load_model(tmp_path / "ckpt.pt").wav2vec2.mask_embedding, model.wav2vec2.mask_embedding)
    export_hf(tmp_path / "ckpt.pt", tmp_path / "hf")
    export_hf(tmp_path / "ckpt.pt", tmp_path / "hf-model", pretraining=False)
    audio = speech_like(1, 12000)
    with torch.no_grad():
        ref = model.wav2vec2(audio)["context"]
        assert torch.allclose(HFPre.from_pretrained(tmp_path / "hf").eval().wav2vec2(audio).last_hidden_state, ref,
                              atol=1e-5)
        assert torch.allclose(Wav2Vec2Model.from_pretrained(tmp_path / "hf-model").eval()(audio).last_hidden_state,
                              ref, atol=1e-5)
        back = load_pretrained(tmp_path / "hf").eval()
        assert torch.allclose(back.wav2vec2(audio)["context"], ref, atol=1e-6)
        assert torch.equal(back.quantizer.codevectors, model.quantizer.codevectors)


FAIRSEQ_TINY = {"conv_feature_layers": "[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2", "conv_bias": False,
                "extractor_mode": "default", "encoder_embed_dim": 32, "encoder_layers": 2, "encoder_ffn_embed_dim": 48,
                "encoder_attention_heads": 4, "conv_pos": 16, "conv_pos_groups": 4, "layer_norm_first": False,
                "latent_vars": 12, "latent_groups": 2, "latent_dim": 16, "final_dim": 8,
                "latent_temp": "(2, 0.5, 0.999995)"}


def to_fairseq_state(model: Wav2Vec2ForPreTraining) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` under fairseq ``Wav2Vec2Model`` key names (for ``tiny_cfg``)."""
    cfg, sd = model.cfg, model.state_dict()
    fs = {}
    for i in range(7):
        fs[f"feature_extractor.conv_layers.{i}.0.weight"] = sd[f"wav2vec2.feature_encoder.layers.{i}.conv.weight"]
    fs["feature_extractor.conv_layers.0.2.weight"] = sd["wav2vec2.feature_encoder.layers.0.norm.weight"]
    fs["feature_extractor.conv_layers.0.2.bias"] = sd["wav2vec2.feature_encoder.layers.0.norm.bias"]
    for ours, theirs in [("feature_projection.norm", "layer_norm"), ("feature_projection.linear", "post_extract_proj"),
                         ("context.norm", "encoder.layer_norm")]:
        for p in ("weight", "bias"):
            fs[f"{theirs}.{p}"] = sd[f"wav2vec2.{ours}.{p}"]
    fs["mask_emb"] = sd["wav2vec2.mask_embedding"]
    fs["encoder.pos_conv.0.weight_g"] = sd["wav2vec2.context.pos_conv.conv.parametrizations.weight.original0"]
    fs["encoder.pos_conv.0.weight_v"] = sd["wav2vec2.context.pos_conv.conv.parametrizations.weight.original1"]
    fs["encoder.pos_conv.0.bias"] = sd["wav2vec2.context.pos_conv.conv.bias"]
    for i in range(cfg.layers):
        pre = f"wav2vec2.context.layers.{i}."
        for p in ("weight", "bias"):
            q, k, v = sd[pre + f"attention.qkv.{p}"].chunk(3)
            fs[f"encoder.layers.{i}.self_attn.q_proj.{p}"] = q
            fs[f"encoder.layers.{i}.self_attn.k_proj.{p}"] = k
            fs[f"encoder.layers.{i}.self_attn.v_proj.{p}"] = v
            for ours, theirs in [("attention.out", "self_attn.out_proj"), ("attn_norm", "self_attn_layer_norm"),
                                 ("ffn.fc1", "fc1"), ("ffn.fc2", "fc2"), ("ffn_norm", "final_layer_norm")]:
                fs[f"encoder.layers.{i}.{theirs}.{p}"] = sd[pre + f"{ours}.{p}"]
    fs["quantizer.vars"] = sd["quantizer.codevectors"].reshape(1, -1, 8)
    for p in ("weight", "bias"):
        fs[f"quantizer.weight_proj.{p}"] = sd[f"quantizer.weight_proj.{p}"]
        fs[f"project_q.{p}"] = sd[f"project_quantized.{p}"]
        fs[f"final_proj.{p}"] = sd[f"project_context.{p}"]
    return fs


def test_import_fairseq_checkpoint(tmp_path):
    """A fairseq-format checkpoint (key names and cfg of fairseq's Wav2Vec2Model) loads with equal outputs."""
    from trainer.hf import load_pretrained

    torch.manual_seed(0)
    cfg = tiny_cfg(conv_padding="none", activation="gelu")
    ref = Wav2Vec2ForPreTraining(cfg).eval()
    randomise(ref)
    fs = to_fairseq_state(ref)
    model_cfg = dict(FAIRSEQ_TINY)
    torch.save({"cfg": {"model": model_cfg}, "model": fs}, tmp_path / "fairseq.pt")
    got = load_pretrained(tmp_path / "fairseq.pt").eval()
    audio = speech_like(1, 9000)
    with torch.no_grad():
        assert torch.allclose(got.wav2vec2(audio)["context"], ref.wav2vec2(audio)["context"], atol=1e-6)
    assert got.cfg.conv_padding == "none" and got.cfg.temperature == [2, 0.5, 0.999995]
    # A CTC fine-tuned fairseq checkpoint nests the same weights under w2v_encoder.w2v_model.
    ctc = {f"w2v_encoder.w2v_model.{k}": v for k, v in fs.items()}
    ctc["w2v_encoder.proj.weight"] = torch.zeros(5, 32)
    torch.save({"cfg": {"model": {"w2v_args": {"model": model_cfg}}}, "model": ctc}, tmp_path / "ctc.pt")
    got = load_pretrained(tmp_path / "ctc.pt").eval()
    with torch.no_grad():
        assert torch.allclose(got.wav2vec2(audio)["context"], ref.wav2vec2(audio)["context"], atol=1e-6)


def test_negative_sampling_compiles_with_symbolic_shapes():
    """``trainer pretrain --compile`` recompiles with symbolic shapes on a later step; drawing
    distractors with ``generator=None`` failed there ("SymIntArrayRef expected to contain only
    concrete integers")."""
    from trainer.losses import sample_negatives

    compiled = torch.compile(sample_negatives, backend="aot_eager", dynamic=True)
    for n in (7, 11, 13):
        utt = torch.tensor([0] * (n // 2) + [1] * (n - n // 2))
        idx, usable = compiled(utt, 5)
        assert idx.shape == (n, 5) and usable.all()
