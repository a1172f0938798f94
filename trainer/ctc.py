"""wav2vec 2.0 with a CTC head for speech recognition (thesis §5.2.4).

``Wav2Vec2ForCTC`` = the pre-trained backbone (``trainer.model.Wav2Vec2``: CNN → projection →
mask → transformer; no quantizer) + dropout + one Linear layer on the last transformer layer's
output, giving logits over ``trainer.text.VOCAB`` (blank = 0, ``|``, ``'``, a–z).

During training the backbone still masks: spans of ``mask_length`` frames with ``mask_prob``
(0.05 for fine-tuning) are replaced by the learned mask vector, a SpecAugment-like regulariser.
No masking in eval mode.

Freezing (``set_trainable``) works through ``requires_grad``: the CNN never trains; the rest of
the backbone (projection, mask vector, positional conv, transformer) trains only once
``transformer=True``. A frozen part builds no autograd graph, so it costs forward time only.

Checkpoints of this model are ``torch.save`` dicts
``{"kind": "ctc", "config": backbone config, "vocab": [...], "final_dropout": float, "model": state_dict, ...}``
read by ``load_ctc_model``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from corpus_tools.audio import SAMPLE_RATE
from trainer import safe_load
from trainer.checkpoint import CHECKPOINT_DIR, latest_checkpoint, load_checkpoint
from trainer.hf import load_pretrained, state_dict_to_hf, to_hf_config
from trainer.masking import span_mask
from trainer.model import Wav2Vec2, Wav2Vec2Config, load_config
from trainer.text import BLANK_ID, VOCAB

CTC_KIND = "ctc"


class Wav2Vec2ForCTC(nn.Module):
    """Backbone + CTC head. ``forward(audio, lengths)`` → ``{"logits": [B, T, V], "frame_lengths": [B]}``."""

    def __init__(self, cfg: Wav2Vec2Config, vocab: tuple[str, ...] | list[str] = VOCAB, final_dropout: float = 0.0):
        super().__init__()
        self.cfg = cfg
        self.vocab = tuple(vocab)
        self.final_dropout = float(final_dropout)
        self.wav2vec2 = Wav2Vec2(cfg)
        self.dropout = nn.Dropout(self.final_dropout)
        self.lm_head = nn.Linear(cfg.d_model, len(self.vocab))
        # fairseq wav2vec_ctc: Xavier-uniform weights, zero bias.
        nn.init.xavier_uniform_(self.lm_head.weight)
        nn.init.zeros_(self.lm_head.bias)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        mask_fn = None
        if self.training and cfg.mask_prob > 0:
            def mask_fn(frame_lengths: torch.Tensor, T: int) -> torch.Tensor:
                return span_mask(frame_lengths, T, cfg.mask_prob, cfg.mask_length, generator)

        out = self.wav2vec2(audio, lengths, mask_fn=mask_fn)
        context = out["context"]
        frame_lengths = out["frame_lengths"]
        if frame_lengths is None:
            frame_lengths = torch.full((context.shape[0],), context.shape[1], dtype=torch.long, device=context.device)
        logits = self.lm_head(self.dropout(context))
        return {"logits": logits, "frame_lengths": frame_lengths}

    # -- freezing --------------------------------------------------------------------------

    def set_trainable(self, transformer: bool) -> None:
        """CNN frozen always; the rest of the backbone trainable iff ``transformer``; head always."""
        for name, p in self.wav2vec2.named_parameters():
            p.requires_grad_(transformer and not name.startswith("feature_encoder."))
        for p in self.lm_head.parameters():
            p.requires_grad_(True)

    def finetunable_parameters(self) -> list[nn.Parameter]:
        """Everything the optimizer may ever update (all but the CNN), trainable now or later."""
        return [p for n, p in self.named_parameters() if not n.startswith("wav2vec2.feature_encoder.")]

    # -- saving ----------------------------------------------------------------------------

    def checkpoint_dict(self) -> dict[str, Any]:
        """The part of a checkpoint that ``load_ctc_model`` needs."""
        return {"kind": CTC_KIND, "config": self.cfg.to_dict(), "vocab": list(self.vocab),
                "final_dropout": self.final_dropout, "model": self.state_dict()}


def ctc_loss(logits: torch.Tensor, frame_lengths: torch.Tensor, targets: list[list[int]],
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over utterances of the CTC loss per target letter (``F.ctc_loss(reduction="mean")``).

    Computed in float32. ``zero_infinity``: an utterance whose transcript needs more frames than
    it has contributes 0 instead of inf. ``weights`` (0/1 per utterance) leaves utterances out
    while keeping every rank's graph the same shape (DDP).
    """
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # [T, B, V]
    target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
    flat = torch.tensor([i for t in targets for i in t], dtype=torch.long)
    per_utt = F.ctc_loss(log_probs, flat.to(logits.device), frame_lengths.to(torch.long),
                         target_lengths.to(logits.device), blank=BLANK_ID, reduction="none", zero_infinity=True)
    per_utt = per_utt / target_lengths.to(logits.device).clamp_min(1)
    if weights is None:
        return per_utt.mean()
    weights = weights.to(per_utt)
    return (per_utt * weights).sum() / weights.sum().clamp_min(1)


def ctc_config(cfg: Wav2Vec2Config, overrides: dict[str, Any] | None = None) -> Wav2Vec2Config:
    """The backbone config with fine-tuning overrides (dropout, mask_prob, …)."""
    return dataclasses.replace(cfg, **(overrides or {})) if overrides else cfg


def is_ctc_checkpoint(path: str | Path, *, trust: bool = False) -> bool:
    """True for a file written by ``trainer finetune`` (cheap enough: our checkpoints are small dicts)."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".pt":
        return False
    try:
        ckpt = safe_load.load(path, trust=trust, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable or refused: not one of ours (the caller says why)
        return False
    return isinstance(ckpt, dict) and ckpt.get("kind") == CTC_KIND


def resolve_ctc_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or for a run directory its ``best.pt`` (best validation WER), else its latest step."""
    path = Path(path)
    if path.is_dir():
        best = path / CHECKPOINT_DIR / "best.pt"
        found = best if best.exists() else latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"{path} holds no checkpoints/best.pt or checkpoints/step_*.pt")
        path = found
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def load_ctc_model(path: str | Path, *, map_location: str | torch.device = "cpu",
                   overrides: dict[str, Any] | None = None, trust: bool = False) -> Wav2Vec2ForCTC:
    """A ``Wav2Vec2ForCTC`` from a fine-tuning checkpoint or run directory (eval mode); read
    without running code from the file unless ``trust`` (``trainer.safe_load``)."""
    path = resolve_ctc_checkpoint(path)
    ckpt = load_checkpoint(path, trust=trust)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != CTC_KIND:
        raise ValueError(f"{path} is not a CTC fine-tuning checkpoint (written by `trainer finetune`)")
    cfg = ctc_config(Wav2Vec2Config.from_dict(ckpt["config"]), overrides)
    model = Wav2Vec2ForCTC(cfg, ckpt.get("vocab", VOCAB), ckpt.get("final_dropout", 0.0))
    model.load_state_dict(ckpt["model"])
    return model.to(map_location).eval()


def init_ctc_model(init: str | Path | None, *, config: str | None = None, overrides: dict[str, Any] | None = None,
                   final_dropout: float = 0.0, trust: bool = False) -> Wav2Vec2ForCTC:
    """A CTC model whose backbone comes from ``init``, with a fresh head.

    ``init``: our pre-training checkpoint or run directory, a Hugging Face Wav2Vec2 folder, a
    fairseq ``.pt`` (all through ``trainer.hf.load_pretrained``), or a CTC checkpoint of ours (its
    head is kept too). ``init=None`` builds a randomly initialised backbone of the named
    ``config`` (tests, ablations).
    """
    if init is None:
        if config is None:
            raise ValueError("give an --init checkpoint or a --config for a random backbone")
        cfg = ctc_config(load_config(config), overrides)
        return Wav2Vec2ForCTC(cfg, final_dropout=final_dropout)
    init = Path(init)
    if not init.exists():
        raise FileNotFoundError(f"--init {init} does not exist")
    if init.is_dir() and not (init / "config.json").exists():
        found = latest_checkpoint(init) or (init / CHECKPOINT_DIR / "best.pt")
        if not found.exists():
            raise FileNotFoundError(f"{init} is neither a Hugging Face folder (config.json) nor a run directory "
                                    "with checkpoints/")
        init = found
    if is_ctc_checkpoint(init, trust=trust):
        model = load_ctc_model(init, overrides=overrides, trust=trust)
        model.final_dropout = float(final_dropout)
        model.dropout.p = float(final_dropout)
        return model.train()
    pre = load_pretrained(init, trust=trust)
    model = Wav2Vec2ForCTC(ctc_config(pre.cfg, overrides), final_dropout=final_dropout)
    model.wav2vec2.load_state_dict(pre.wav2vec2.state_dict())
    return model.train()


# ---------------------------------------------------------------------------------------------
# Hugging Face export


def hf_ctc_config(model: Wav2Vec2ForCTC):
    """``transformers.Wav2Vec2Config`` of a CTC model: the backbone mapping of ``trainer.hf`` + the head."""
    hf_cfg = to_hf_config(model.cfg)
    hf_cfg.vocab_size = len(model.vocab)
    hf_cfg.pad_token_id = BLANK_ID          # HF's CTC blank is the pad token
    hf_cfg.final_dropout = model.final_dropout
    hf_cfg.ctc_loss_reduction = "mean"
    hf_cfg.ctc_zero_infinity = True
    hf_cfg.mask_time_prob = model.cfg.mask_prob
    hf_cfg.mask_time_length = model.cfg.mask_length
    hf_cfg.architectures = ["Wav2Vec2ForCTC"]
    return hf_cfg


def ctc_state_dict_to_hf(model: Wav2Vec2ForCTC) -> dict[str, torch.Tensor]:
    """Our CTC state dict under HF ``Wav2Vec2ForCTC`` names (backbone via ``trainer.hf.state_dict_to_hf``)."""
    backbone = {k: v for k, v in model.state_dict().items() if k.startswith("wav2vec2.")}
    out = state_dict_to_hf(backbone, model.cfg)
    out["lm_head.weight"] = model.lm_head.weight.detach().clone()
    out["lm_head.bias"] = model.lm_head.bias.detach().clone()
    return out


def export_hf_ctc(ckpt: str | Path | Wav2Vec2ForCTC, out_dir: str | Path, *, trust: bool = False) -> Path:
    """Write a Hugging Face ``Wav2Vec2ForCTC`` + ``Wav2Vec2Processor`` folder.

    The processor is a ``Wav2Vec2CTCTokenizer`` over our vocabulary (``vocab.json``: blank =
    ``<blank>`` = pad token = id 0, ``|`` word delimiter; the blank doubles as unk token, so the
    tokenizer has exactly the model's 29 ids) and the same feature extractor as ``trainer export-hf``
    (raw 16 kHz waveform, no normalisation). Text fed to the tokenizer must be normalised with
    ``corpus_tools.text.normalize_text`` first.
    """
    import json as _json

    from transformers import (Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC as HFCTC,
                              Wav2Vec2Processor)

    model = ckpt if isinstance(ckpt, Wav2Vec2ForCTC) else load_ctc_model(ckpt, trust=trust)
    hf_model = HFCTC(hf_ctc_config(model))
    missing, unexpected = hf_model.load_state_dict(ctc_state_dict_to_hf(model), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"HF export mismatch: missing {missing}, unexpected {unexpected}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(out)
    vocab_path = out / "vocab.json"
    vocab_path.write_text(_json.dumps({t: i for i, t in enumerate(model.vocab)}, ensure_ascii=False, indent=1))
    blank = model.vocab[BLANK_ID]
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab_path), pad_token=blank, unk_token=blank, bos_token=None,
                                     eos_token=None, word_delimiter_token="|", do_lower_case=False)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0, do_normalize=False,
                                         return_attention_mask=True)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out)
    return out
