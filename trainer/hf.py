"""Interoperability: Hugging Face ``transformers`` and fairseq wav2vec 2.0 checkpoints.

* ``to_hf_config`` / ``from_hf_config``: our ``Wav2Vec2Config`` ↔ ``transformers.Wav2Vec2Config``.
* ``state_dict_to_hf`` / ``state_dict_from_hf``: parameter renaming both ways (our attention uses one
  fused QKV matrix; HF keeps q/k/v separate).
* ``export_hf(ckpt, out_dir)``: write a ``Wav2Vec2ForPreTraining`` (or ``Wav2Vec2Model``) folder.
* ``load_pretrained(path)``: our checkpoint, an HF folder, or a fairseq ``.pt`` (pre-training or
  CTC fine-tuned) → ``Wav2Vec2ForPreTraining`` initialised with its weights.

Exactness: HF and fairseq have no padding in the feature encoder. A model built with
``conv_padding="none"`` and ``activation="gelu"`` (what the importers produce for the usual
checkpoints; a fairseq ``activation_fn`` of gelu_accurate or relu sets the FFN activation and
keeps exact GELU in the convolutions, as fairseq does) gives the same
transformer output as HF ``Wav2Vec2Model`` in eval mode (tested to 1e-5). A model trained with
the thesis' 50 frames/s padding exports its weights unchanged, but HF will run the convolutions
unpadded, so its frames are shifted by a few samples (49.9 frames/s); a warning says so.
"""

from __future__ import annotations

import argparse
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from corpus_tools.audio import SAMPLE_RATE
from trainer import safe_load
from trainer.checkpoint import load_model, model_from_checkpoint
from trainer.model import Wav2Vec2Config, Wav2Vec2ForPreTraining

HF_ACTIVATIONS = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "relu": "relu"}
# fairseq ``activation_fn`` → ours. fairseq applies it in the transformer FFN only; its CNN and
# positional conv use exact GELU. "gelu_fast" is fairseq's deprecated name for "gelu_accurate".
FAIRSEQ_ACTIVATIONS = {"gelu": "gelu", "gelu_accurate": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu"}

# (ours, HF) key prefixes for everything but the fused attention projection; "{i}" is a layer index.
# Ours are relative to Wav2Vec2ForPreTraining, HF's to HF Wav2Vec2ForPreTraining ("wav2vec2." = backbone).
_HF_NAMES = [
    ("wav2vec2.feature_encoder.layers.{i}.conv.", "wav2vec2.feature_extractor.conv_layers.{i}.conv."),
    ("wav2vec2.feature_encoder.layers.{i}.norm.", "wav2vec2.feature_extractor.conv_layers.{i}.layer_norm."),
    ("wav2vec2.feature_projection.norm.", "wav2vec2.feature_projection.layer_norm."),
    ("wav2vec2.feature_projection.linear.", "wav2vec2.feature_projection.projection."),
    ("wav2vec2.mask_embedding", "wav2vec2.masked_spec_embed"),
    ("wav2vec2.context.pos_conv.conv.", "wav2vec2.encoder.pos_conv_embed.conv."),
    ("wav2vec2.context.norm.", "wav2vec2.encoder.layer_norm."),
    ("wav2vec2.context.layers.{i}.attention.out.", "wav2vec2.encoder.layers.{i}.attention.out_proj."),
    ("wav2vec2.context.layers.{i}.attn_norm.", "wav2vec2.encoder.layers.{i}.layer_norm."),
    ("wav2vec2.context.layers.{i}.ffn.fc1.", "wav2vec2.encoder.layers.{i}.feed_forward.intermediate_dense."),
    ("wav2vec2.context.layers.{i}.ffn.fc2.", "wav2vec2.encoder.layers.{i}.feed_forward.output_dense."),
    ("wav2vec2.context.layers.{i}.ffn_norm.", "wav2vec2.encoder.layers.{i}.final_layer_norm."),
    ("quantizer.weight_proj.", "quantizer.weight_proj."),
    ("project_quantized.", "project_q."),
    ("project_context.", "project_hid."),
]
_QKV = re.compile(r"wav2vec2\.context\.layers\.(\d+)\.attention\.qkv\.(weight|bias)$")
_HF_QKV = re.compile(r"wav2vec2\.encoder\.layers\.(\d+)\.attention\.(q|k|v)_proj\.(weight|bias)$")


def _rename(key: str, pairs: list[tuple[str, str]]) -> str | None:
    """Map ``key`` through the first (source prefix → target prefix) pair that matches, else None."""
    for src, dst in pairs:
        pattern = "^" + re.escape(src).replace(re.escape("{i}"), r"(\d+)")
        new, n = re.subn(pattern, dst.replace("{i}", r"\1"), key)
        if n:
            return new
    return None


def to_hf_config(cfg: Wav2Vec2Config):
    """``transformers.Wav2Vec2Config`` with the same architecture (dropouts included, LayerDrop 0)."""
    from transformers import Wav2Vec2Config as HFConfig

    if cfg.conv_padding != "none":
        warnings.warn("HF Wav2Vec2 has no feature-encoder padding: the exported model keeps the weights but "
                      "runs the CNN unpadded (≈49.9 instead of 50 frames/s).", stacklevel=2)
    return HFConfig(
        hidden_size=cfg.d_model, num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
        intermediate_size=cfg.ffn_dim, hidden_act=HF_ACTIVATIONS[cfg.activation],
        feat_extract_activation=HF_ACTIVATIONS[cfg.conv_activation or cfg.activation],
        hidden_dropout=cfg.dropout, activation_dropout=cfg.activation_dropout, attention_dropout=cfg.attention_dropout,
        feat_proj_dropout=cfg.feature_dropout, feat_quantizer_dropout=0.0, final_dropout=0.0, layerdrop=0.0,
        layer_norm_eps=cfg.layer_norm_eps, feat_extract_norm=cfg.conv_norm,
        conv_dim=list(cfg.conv_channels), conv_kernel=list(cfg.conv_kernels), conv_stride=list(cfg.conv_strides),
        conv_bias=cfg.conv_bias, num_conv_pos_embeddings=cfg.pos_conv_kernel,
        num_conv_pos_embedding_groups=cfg.pos_conv_groups, do_stable_layer_norm=cfg.norm_first,
        apply_spec_augment=True, mask_time_prob=cfg.mask_prob, mask_time_length=cfg.mask_length,
        num_codevectors_per_group=cfg.codebook_entries, num_codevector_groups=cfg.codebooks,
        codevector_dim=cfg.codevector_dim, proj_codevector_dim=cfg.final_dim,
        contrastive_logits_temperature=cfg.logit_temp, num_negatives=cfg.num_negatives,
        diversity_loss_weight=cfg.diversity_weight,
    )


def from_hf_config(hf) -> Wav2Vec2Config:
    """Our config for a ``transformers.Wav2Vec2Config`` (unpadded CNN, HF's activations: ``hidden_act``
    in the FFN, ``feat_extract_activation`` in the CNN and the positional conv)."""
    act = {v: k for k, v in HF_ACTIVATIONS.items()}
    for name in ("hidden_act", "feat_extract_activation"):
        if getattr(hf, name) not in act:
            raise ValueError(f"unsupported HF {name}={getattr(hf, name)!r}; supported: {sorted(act)}")
    conv_activation = None if hf.feat_extract_activation == hf.hidden_act else act[hf.feat_extract_activation]
    return Wav2Vec2Config(
        name="hf-import", conv_channels=list(hf.conv_dim), conv_kernels=list(hf.conv_kernel),
        conv_strides=list(hf.conv_stride), conv_padding="none", conv_bias=hf.conv_bias,
        conv_norm=hf.feat_extract_norm, activation=act[hf.hidden_act], conv_activation=conv_activation,
        d_model=hf.hidden_size,
        layers=hf.num_hidden_layers, heads=hf.num_attention_heads, ffn_dim=hf.intermediate_size,
        pos_conv_kernel=hf.num_conv_pos_embeddings, pos_conv_groups=hf.num_conv_pos_embedding_groups,
        norm_first=hf.do_stable_layer_norm, dropout=hf.hidden_dropout, attention_dropout=hf.attention_dropout,
        activation_dropout=hf.activation_dropout, feature_dropout=hf.feat_proj_dropout,
        layer_norm_eps=hf.layer_norm_eps, codebooks=hf.num_codevector_groups,
        codebook_entries=hf.num_codevectors_per_group, codevector_dim=hf.codevector_dim,
        final_dim=hf.proj_codevector_dim, logit_temp=hf.contrastive_logits_temperature,
        num_negatives=hf.num_negatives,
    )


def state_dict_to_hf(state: dict[str, torch.Tensor], cfg: Wav2Vec2Config) -> dict[str, torch.Tensor]:
    """Rename a ``Wav2Vec2ForPreTraining`` state dict to HF ``Wav2Vec2ForPreTraining`` keys."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "quantizer.temperature":
            continue
        if key == "quantizer.codevectors":
            out["quantizer.codevectors"] = value.reshape(1, -1, value.shape[-1]).clone()
            continue
        m = _QKV.match(key)
        if m:
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"wav2vec2.encoder.layers.{m.group(1)}.attention.{name}_proj.{m.group(2)}"] = part.clone()
            continue
        new = _rename(key, _HF_NAMES)
        if new is None:
            raise KeyError(f"no HF name for parameter {key!r}")
        out[new] = value
    return out


def state_dict_from_hf(state: dict[str, torch.Tensor], cfg: Wav2Vec2Config) -> dict[str, torch.Tensor]:
    """Rename HF ``Wav2Vec2ForPreTraining``/``Wav2Vec2Model``/``Wav2Vec2ForCTC`` keys to ours.

    Keys without a counterpart (CTC head, adapters) are dropped; a bare ``Wav2Vec2Model`` state
    dict (no ``wav2vec2.`` prefix) is accepted too. Legacy ``weight_g``/``weight_v`` names of the
    positional conv are converted.
    """
    if not any(k.startswith("wav2vec2.") for k in state):
        state = {f"wav2vec2.{k}": v for k, v in state.items()}
    state = {key.replace("pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0")
                 .replace("pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1"): value
             for key, value in state.items()}
    return _to_ours(state, cfg, "quantizer.codevectors", _HF_QKV, [(theirs, ours) for ours, theirs in _HF_NAMES])


def _to_ours(state: dict[str, torch.Tensor], cfg: Wav2Vec2Config, codevectors: str, qkv_key: re.Pattern,
             names: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Another implementation's state dict under our names: its codevectors (key ``codevectors``)
    reshaped per codebook, its separate q/k/v projections (``qkv_key``: layer, q|k|v, weight|bias)
    joined into our fused ``qkv``, every other key renamed by ``names`` (dropped without one)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key == codevectors:
            out["quantizer.codevectors"] = value.reshape(cfg.codebooks, cfg.codebook_entries, -1).clone()
            continue
        m = qkv_key.match(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        new = _rename(key, names)
        if new is not None:
            out[new] = value
    for (layer, kind), parts in qkv.items():
        out[f"wav2vec2.context.layers.{layer}.attention.qkv.{kind}"] = torch.cat([parts[c] for c in "qkv"], dim=0)
    return out


def export_hf(ckpt_path: str | Path, out_dir: str | Path, *, pretraining: bool = True, trust: bool = False) -> Path:
    """Write an HF folder (``config.json``, weights, feature-extractor config) from our checkpoint."""
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining as HFPre, Wav2Vec2Model as HFModel

    model = load_model(ckpt_path, trust=trust)
    cfg = model.cfg
    hf_cfg = to_hf_config(cfg)
    state = state_dict_to_hf(model.state_dict(), cfg)
    if pretraining:
        hf_model = HFPre(hf_cfg)
    else:
        hf_model = HFModel(hf_cfg)
        state = {k[len("wav2vec2."):]: v for k, v in state.items() if k.startswith("wav2vec2.")}
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"HF export mismatch: missing {missing}, unexpected {unexpected}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out_dir)
    # Thesis/fairseq BASE: raw waveform, no per-utterance normalisation.
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=False,
                             return_attention_mask=True).save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------
# fairseq


def _plain_config(obj: Any) -> Any:
    """A fairseq config as plain containers: an omegaconf ``DictConfig`` (fairseq ≥ 0.10 saves
    ``cfg`` as one) or a legacy ``argparse.Namespace`` (``args``) → dict."""
    if isinstance(obj, argparse.Namespace):
        return vars(obj)
    try:
        from omegaconf import OmegaConf
    except ImportError:
        return obj
    if OmegaConf.is_config(obj):
        try:
            return OmegaConf.to_container(obj, resolve=True)
        except Exception:  # noqa: BLE001 - an interpolation that points outside the saved config
            return OmegaConf.to_container(obj, resolve=False)
    return obj


def _fairseq_model_cfg(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The wav2vec2 model config of a fairseq checkpoint (new ``cfg`` or legacy ``args``)."""
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"not a fairseq checkpoint: it holds a {type(ckpt).__name__}")
    if ckpt.get("cfg") is not None:
        model_cfg = dict(_plain_config(_plain_config(ckpt["cfg"])["model"]))
    elif ckpt.get("args") is not None:
        model_cfg = dict(_plain_config(ckpt["args"]))
    else:
        raise ValueError("not a fairseq checkpoint: no 'cfg' or 'args'")
    w2v = _plain_config(model_cfg.get("w2v_args"))  # a CTC fine-tuned checkpoint wraps the pre-training config
    if w2v is not None:
        model_cfg = dict(_plain_config(w2v["model"])) if isinstance(w2v, Mapping) and "model" in w2v else dict(w2v)
    return model_cfg


def from_fairseq_config(mc: dict[str, Any]) -> Wav2Vec2Config:
    """Our config for a fairseq ``Wav2Vec2Config`` dict.

    ``activation_fn`` (fairseq's default "gelu") sets the FFN activation: "gelu" → exact GELU,
    "gelu_accurate" → tanh GELU, "relu" → ReLU; the CNN and positional conv stay exact GELU, as
    in fairseq. Any other activation_fn is refused: the model would compute something else.
    """
    if int(mc.get("pos_conv_depth", 1) or 1) != 1:
        raise ValueError("fairseq pos_conv_depth > 1 (data2vec-style) is not supported")
    activation_fn = str(mc.get("activation_fn") or "gelu")
    if activation_fn not in FAIRSEQ_ACTIVATIONS:
        raise ValueError(f"fairseq activation_fn {activation_fn!r} cannot be represented; supported: "
                         f"{', '.join(sorted(FAIRSEQ_ACTIVATIONS))}")
    activation = FAIRSEQ_ACTIVATIONS[activation_fn]
    layers = eval(mc.get("conv_feature_layers", "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"))  # noqa: S307 fairseq stores a Python expression
    latent_dim = int(mc.get("latent_dim", 0) or 0)
    final_dim = int(mc.get("final_dim", 0) or 0) or int(mc.get("encoder_embed_dim", 768))
    temp = mc.get("latent_temp", (2.0, 0.5, 0.999995))
    if isinstance(temp, str):
        temp = eval(temp)  # noqa: S307
    return Wav2Vec2Config(
        name="fairseq-import", conv_channels=[l[0] for l in layers], conv_kernels=[l[1] for l in layers],
        conv_strides=[l[2] for l in layers], conv_padding="none", conv_bias=bool(mc.get("conv_bias", False)),
        conv_norm={"default": "group", "layer_norm": "layer"}[mc.get("extractor_mode", "default")],
        activation=activation, conv_activation=None if activation == "gelu" else "gelu",
        d_model=int(mc.get("encoder_embed_dim", 768)), layers=int(mc.get("encoder_layers", 12)),
        heads=int(mc.get("encoder_attention_heads", 12)), ffn_dim=int(mc.get("encoder_ffn_embed_dim", 3072)),
        pos_conv_kernel=int(mc.get("conv_pos", 128)), pos_conv_groups=int(mc.get("conv_pos_groups", 16)),
        norm_first=bool(mc.get("layer_norm_first", False)), dropout=float(mc.get("dropout", 0.1)),
        attention_dropout=float(mc.get("attention_dropout", 0.1)),
        activation_dropout=float(mc.get("activation_dropout", 0.0)),
        codebooks=int(mc.get("latent_groups", 2)), codebook_entries=int(mc.get("latent_vars", 320)),
        codevector_dim=latent_dim or final_dim, final_dim=final_dim, temperature=list(temp),
        logit_temp=float(mc.get("logit_temp", 0.1)), num_negatives=int(mc.get("num_negatives", 100)),
    )


_FAIRSEQ_NAMES = [  # (fairseq, ours) prefixes; order matters ("2.1." before "2.")
    ("feature_extractor.conv_layers.{i}.0.", "wav2vec2.feature_encoder.layers.{i}.conv."),
    ("feature_extractor.conv_layers.{i}.2.1.", "wav2vec2.feature_encoder.layers.{i}.norm."),
    ("feature_extractor.conv_layers.{i}.2.", "wav2vec2.feature_encoder.layers.{i}.norm."),
    ("layer_norm.", "wav2vec2.feature_projection.norm."),
    ("post_extract_proj.", "wav2vec2.feature_projection.linear."),
    ("mask_emb", "wav2vec2.mask_embedding"),
    ("encoder.pos_conv.0.weight_g", "wav2vec2.context.pos_conv.conv.parametrizations.weight.original0"),
    ("encoder.pos_conv.0.weight_v", "wav2vec2.context.pos_conv.conv.parametrizations.weight.original1"),
    ("encoder.pos_conv.0.bias", "wav2vec2.context.pos_conv.conv.bias"),
    ("encoder.layer_norm.", "wav2vec2.context.norm."),
    ("encoder.layers.{i}.self_attn.out_proj.", "wav2vec2.context.layers.{i}.attention.out."),
    ("encoder.layers.{i}.self_attn_layer_norm.", "wav2vec2.context.layers.{i}.attn_norm."),
    ("encoder.layers.{i}.fc1.", "wav2vec2.context.layers.{i}.ffn.fc1."),
    ("encoder.layers.{i}.fc2.", "wav2vec2.context.layers.{i}.ffn.fc2."),
    ("encoder.layers.{i}.final_layer_norm.", "wav2vec2.context.layers.{i}.ffn_norm."),
    ("quantizer.weight_proj.", "quantizer.weight_proj."),
    ("project_q.", "project_quantized."),
    ("final_proj.", "project_context."),
]
_FAIRSEQ_QKV = re.compile(r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)$")


def state_dict_from_fairseq(state: dict[str, torch.Tensor], cfg: Wav2Vec2Config) -> dict[str, torch.Tensor]:
    """Rename a fairseq wav2vec2 (or ``w2v_encoder.w2v_model.``-prefixed CTC) state dict to ours."""
    prefix = "w2v_encoder.w2v_model."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return _to_ours(state, cfg, "quantizer.vars", _FAIRSEQ_QKV, _FAIRSEQ_NAMES)


# ---------------------------------------------------------------------------------------------
# One entry point for initialisation


def load_pretrained(path: str | Path, *, strict_backbone: bool = True, trust: bool = False) -> Wav2Vec2ForPreTraining:
    """A ``Wav2Vec2ForPreTraining`` initialised from our checkpoint, an HF folder or a fairseq ``.pt``.

    Missing quantizer/projection weights (e.g. from a CTC model) keep their fresh initialisation;
    missing backbone weights are an error when ``strict_backbone``. Files are read without
    running code from them (``trainer.safe_load``) unless ``trust``.
    """
    path = Path(path)
    if path.is_dir():
        from transformers import Wav2Vec2Config as HFConfig

        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} has no config.json (not a Hugging Face model folder)")
        hf_cfg = HFConfig.from_pretrained(path)
        cfg = from_hf_config(hf_cfg)
        if (path / "model.safetensors").exists():
            from safetensors.torch import load_file

            raw = load_file(str(path / "model.safetensors"))
        elif (path / "pytorch_model.bin").exists():
            raw = safe_load.load(path / "pytorch_model.bin", trust=trust)
        else:
            raise FileNotFoundError(f"{path} has no model.safetensors or pytorch_model.bin")
        state = state_dict_from_hf(raw, cfg)
    else:
        ckpt = safe_load.load(path, trust=trust)
        if isinstance(ckpt, dict) and "config" in ckpt and "model" in ckpt:
            return model_from_checkpoint(ckpt, path)
        cfg = from_fairseq_config(_fairseq_model_cfg(ckpt))
        state = state_dict_from_fairseq(ckpt["model"], cfg)
    model = Wav2Vec2ForPreTraining(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "quantizer.temperature"]
    backbone_missing = [k for k in missing if k.startswith("wav2vec2.")]
    if unexpected or (strict_backbone and backbone_missing):
        raise RuntimeError(f"cannot initialise from {path}: missing {backbone_missing}, unexpected {unexpected}")
    return model

