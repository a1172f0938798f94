"""wav2vec 2.0: configuration, the backbone (``Wav2Vec2``) and the pre-training model.

Data flow (thesis §5.2, Figure 4)::

    audio [B, S] ─ FeatureEncoder (CNN, grad ×0.1) ─ Z [B, T, 512] ─┬─ L2 penalty
                                                                   LayerNorm ─┬─ GumbelQuantizer ─ Q ─ project_q ─ Q'
                                                                   Linear 512→d   (targets)
                                                                   span mask (learned vector)
                                                                   ContextNetwork (pos conv + transformer) ─ C ─ final_proj ─ C'
    contrastive(C', Q') over masked frames + diversity(quantizer) + L2(Z)

``Wav2Vec2`` is the part kept for fine-tuning (``model.wav2vec2`` of the pre-training model);
its output is the transformer output, equal to Hugging Face ``Wav2Vec2Model.last_hidden_state``
for the same weights (see ``trainer/hf.py``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.components import (
    ContextNetwork,
    FeatureEncoder,
    FeatureProjection,
    GradMultiply,
    length_mask,
)
from trainer.losses import LossWeights, combine_losses, contrastive_logits, l2_penalty, sample_negatives
from trainer.masking import span_mask
from trainer.quantizer import GumbelQuantizer

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class Wav2Vec2Config:
    """All architecture and loss hyper-parameters; defaults are BASE (thesis §5.2).

    fairseq names in brackets.
    """

    name: str = "base"
    # Feature encoder [conv_feature_layers, conv_bias, extractor_mode, feature_grad_mult].
    conv_channels: list[int] = field(default_factory=lambda: [512] * 7)
    conv_kernels: list[int] = field(default_factory=lambda: [10, 3, 3, 3, 3, 2, 2])
    conv_strides: list[int] = field(default_factory=lambda: [5, 2, 2, 2, 2, 2, 2])
    conv_padding: str = "50hz"          # "50hz" (thesis: T//320 frames) or "none" (fairseq/HF)
    conv_bias: bool = False
    conv_norm: str = "group"            # "group" (GroupNorm on layer 0) or "layer" (LayerNorm every layer)
    # Activation of the transformer FFN [activation_fn] and, unless conv_activation says otherwise, of
    # the CNN and the positional conv: "gelu_tanh" (thesis), "gelu" (exact; fairseq/HF) or "relu".
    # fairseq's CNN and positional conv always use exact GELU, whatever its activation_fn.
    activation: str = "gelu_tanh"
    conv_activation: str | None = None
    gradient_scale: float = 0.1
    # Context network [encoder_embed_dim, encoder_layers, encoder_attention_heads, encoder_ffn_embed_dim,
    # conv_pos, conv_pos_groups, layer_norm_first, dropout, attention_dropout, activation_dropout].
    d_model: int = 768
    layers: int = 12
    heads: int = 12
    ffn_dim: int = 3072
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    norm_first: bool = False            # False = post-LN (BASE); True = pre-LN (LV-60k LARGE)
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    feature_dropout: float = 0.0        # [dropout_input]; thesis footnote 16: not used
    layer_norm_eps: float = 1e-5
    # Masking [mask_prob, mask_length].
    mask_prob: float = 0.5
    mask_length: int = 10
    # Quantizer [latent_groups, latent_vars, latent_dim, final_dim, latent_temp].
    codebooks: int = 2
    codebook_entries: int = 320
    codevector_dim: int = 256
    final_dim: int = 256
    temperature: list[float] = field(default_factory=lambda: [2.0, 0.5, 0.999995])
    # Loss [num_negatives, logit_temp, loss_weights].
    num_negatives: int = 100
    logit_temp: float = 0.1
    diversity_weight: float = 0.1
    l2_weight: float = 10.0
    loss_reduction: str = "sum"         # "sum" (thesis/nanow2v2) or "mean" (fairseq); see trainer/losses.py

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Wav2Vec2Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def samples_per_frame(self) -> int:
        return math.prod(self.conv_strides)


def available_configs() -> list[str]:
    """Names of the bundled model configs in ``trainer/configs/`` (not the fine-tuning presets)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if not p.stem.startswith("finetune_"))


def load_config_file(name_or_path: str | Path) -> dict[str, Any]:
    """Read a named config (``base``) or a YAML path → ``{"model": {...}, "train": {...}}``."""
    import yaml

    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no config {name_or_path!r}; bundled configs: {', '.join(available_configs())}")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(data) - {"model", "train", "description"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {unknown}; use 'model', 'train', 'description'")
    data.setdefault("model", {})
    data.setdefault("train", {})
    data["model"].setdefault("name", path.stem)
    return data


def load_config(name_or_path: str | Path, **overrides: Any) -> Wav2Vec2Config:
    """The model config of a named config or YAML file, with keyword overrides."""
    model = dict(load_config_file(name_or_path)["model"])
    model.update(overrides)
    return Wav2Vec2Config.from_dict(model)


def _init_transformer(module: nn.Module) -> None:
    """fairseq ``init_bert_params``: Linear weights N(0, 0.02), biases 0."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class Wav2Vec2(nn.Module):
    """The backbone: feature encoder → projection → (mask) → context network.

    ``forward(audio, lengths, mask_time=None)`` returns a dict with
    ``features`` (CNN output Z, [B, T, C]), ``normed`` (LayerNorm(Z), the quantizer input),
    ``frame_mask`` ([B, T] bool, True = valid frame, None when ``lengths`` is None),
    ``frame_lengths`` and ``context`` (transformer output C, [B, T, d]).
    """

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.cfg = cfg
        conv_activation = cfg.conv_activation or cfg.activation
        self.feature_encoder = FeatureEncoder(cfg.conv_channels, cfg.conv_kernels, cfg.conv_strides, cfg.conv_padding,
                                              cfg.conv_bias, cfg.conv_norm, conv_activation)
        self.feature_projection = FeatureProjection(cfg.conv_channels[-1], cfg.d_model, cfg.feature_dropout,
                                                    cfg.layer_norm_eps)
        self.mask_embedding = nn.Parameter(torch.empty(cfg.d_model).uniform_())
        self.context = ContextNetwork(cfg.d_model, cfg.layers, cfg.heads, cfg.ffn_dim, cfg.pos_conv_kernel,
                                      cfg.pos_conv_groups, cfg.dropout, cfg.attention_dropout,
                                      cfg.activation_dropout, cfg.activation, conv_activation, cfg.norm_first,
                                      cfg.layer_norm_eps)
        for layer in self.feature_encoder.layers:
            nn.init.kaiming_normal_(layer.conv.weight)
        self.context.layers.apply(_init_transformer)

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.feature_encoder.output_lengths(lengths)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None,
                mask_time: torch.Tensor | None = None,
                mask_fn=None) -> dict[str, torch.Tensor | None]:
        """``mask_fn(frame_lengths, T) -> [B, T] bool`` builds the mask once the frame count is known
        (an explicit ``mask_time`` wins)."""
        features, frame_lengths = self.feature_encoder(audio, lengths)
        if self.cfg.gradient_scale != 1.0 and self.training:
            features = GradMultiply.apply(features, self.cfg.gradient_scale)
        B, T, _ = features.shape
        frame_mask = None if frame_lengths is None else length_mask(frame_lengths, T)
        x, normed = self.feature_projection(features)
        if mask_time is None and mask_fn is not None:
            lens = frame_lengths if frame_lengths is not None else torch.full((B,), T, device=audio.device)
            mask_time = mask_fn(lens, T)
        if mask_time is not None:
            # torch.where keeps mask_embedding in the graph even without masked frames (DDP needs
            # every parameter to receive a gradient).
            x = torch.where(mask_time[..., None], self.mask_embedding.to(x.dtype), x)
        context = self.context(x, frame_mask)
        return {"features": features, "normed": normed, "frame_mask": frame_mask, "frame_lengths": frame_lengths,
                "context": context, "mask_time": mask_time}


class Wav2Vec2ForPreTraining(nn.Module):
    """Backbone + quantizer + the two projections of the contrastive task.

    ``forward(audio, lengths, generator=None)`` masks, quantizes and returns the loss dict of
    ``trainer.losses.combine_losses`` plus ``accuracy``, ``prob_perplexity`` [G],
    ``code_perplexity`` [G] and ``temperature``. ``generator`` makes masking, negative sampling
    (and nothing else) deterministic, e.g. for validation.
    """

    def __init__(self, cfg: Wav2Vec2Config):
        super().__init__()
        self.cfg = cfg
        self.wav2vec2 = Wav2Vec2(cfg)
        self.quantizer = GumbelQuantizer(cfg.conv_channels[-1], cfg.codebooks, cfg.codebook_entries,
                                         cfg.codevector_dim, tuple(cfg.temperature))
        self.project_quantized = nn.Linear(cfg.codevector_dim, cfg.final_dim)   # fairseq project_q
        self.project_context = nn.Linear(cfg.d_model, cfg.final_dim)            # fairseq final_proj
        self.loss_weights = LossWeights(cfg.diversity_weight, cfg.l2_weight, cfg.loss_reduction)

    def set_step(self, step: int) -> None:
        """Advance the per-step state (gumbel temperature) to optimizer step ``step``."""
        self.quantizer.set_step(step)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        cfg = self.cfg

        def make_mask(frame_lengths: torch.Tensor, T: int) -> torch.Tensor:
            return span_mask(frame_lengths, T, cfg.mask_prob, cfg.mask_length, generator)

        out = self.wav2vec2(audio, lengths, mask_fn=make_mask)
        mask_time, frame_mask = out["mask_time"], out["frame_mask"]
        valid = frame_mask if frame_mask is not None else torch.ones_like(mask_time)
        # Quantize all valid frames: the diversity loss averages over the whole batch (thesis §5.2.3);
        # the targets are the quantized masked frames.
        q_all, qstats = self.quantizer(out["normed"][valid])
        masked_in_valid = mask_time[valid]
        targets = self.project_quantized(q_all[masked_in_valid])
        context = self.project_context(out["context"][mask_time])
        rows = torch.arange(mask_time.shape[0], device=mask_time.device)[:, None].expand_as(mask_time)[mask_time]
        negatives, usable = sample_negatives(rows, cfg.num_negatives, generator)
        logits = contrastive_logits(context, targets, negatives, cfg.logit_temp)[usable]
        ce = torch.nn.functional.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long,
                                                                   device=logits.device), reduction="none")
        if ce.numel() == 0:  # keep every parameter in the graph
            ce = ce + 0.0 * (targets.sum() + context.sum())
        l2 = l2_penalty(out["features"], frame_mask)
        losses = combine_losses(ce, qstats["prob_perplexity"], l2, cfg.codebooks, cfg.codebook_entries,
                                self.loss_weights)
        with torch.no_grad():
            # Correct = the positive strictly beats every distractor (ties count as wrong, as in fairseq).
            correct = logits[:, 0] > logits[:, 1:].max(dim=-1).values
            losses["accuracy"] = correct.float().sum() / max(logits.shape[0], 1)
        losses["prob_perplexity"] = qstats["prob_perplexity"].detach()
        losses["code_perplexity"] = qstats["code_perplexity"].detach()
        losses["temperature"] = self.quantizer.temperature.detach().clone()
        losses["frames"] = valid.sum().float()
        return losses


def codebook_similarity(quantizer: GumbelQuantizer) -> dict[str, float]:
    """Pairwise cosine similarity between the entries of each codebook: mean/min/max per codebook."""
    with torch.no_grad():
        cv = torch.nn.functional.normalize(quantizer.codevectors.float(), dim=-1)  # [G, V, d]
        sim = cv @ cv.transpose(1, 2)
        V = sim.shape[-1]
        off = ~torch.eye(V, dtype=torch.bool, device=sim.device)
        out = {}
        for g in range(sim.shape[0]):
            s = sim[g][off]
            out[f"cb{g}_sim_mean"] = s.mean().item()
            out[f"cb{g}_sim_min"] = s.min().item()
            out[f"cb{g}_sim_max"] = s.max().item()
        return out


def build_model(cfg: Wav2Vec2Config | str) -> Wav2Vec2ForPreTraining:
    """A freshly initialised pre-training model for a config object or a config name."""
    if isinstance(cfg, str):
        cfg = load_config(cfg)
    return Wav2Vec2ForPreTraining(cfg)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
