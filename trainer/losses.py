"""The three pre-training losses of wav2vec 2.0 (thesis §5.2.2, "Objective function").

    L = L_c + λ_d · L_d + λ_p · L_p          λ_d = 0.1, λ_p = 10

* L_c, contrastive: for every masked frame t, cross-entropy of picking q'_t among itself and
  k = 100 distractors drawn (with replacement) from the *other masked frames of the same
  utterance*; logits are cosine similarities divided by τ_c = 0.1. A distractor that is
  identical to the positive gets logit −∞ (fairseq).
* L_d, diversity: V − perplexity of the batch-averaged softmax, per codebook.
* L_p, L2 penalty: mean of z² over the valid CNN output values.

Normalisation (``reduction``), chosen explicitly because the references differ:

* ``"sum"`` (default; thesis §5.2.3 and nanow2v2): L = Σ_t CE_t + 0.1 · Σ_g (V − ppl_g) + 10 · mean(z²).
  The contrastive term is summed over the masked frames of the GPU batch; the gradient therefore
  grows with the batch, which AdamW absorbs. This is what the thesis' learning rates were tuned on.
* ``"mean"`` (fairseq-equivalent): fairseq computes Σ_t CE_t + 0.1 · N · (GV − Σ ppl)/GV +
  10 · N · mean(z²) and divides the gradient by N = number of masked frames, i.e.
  L = mean_t CE_t + 0.1 · (GV − Σ_g ppl_g)/GV + 10 · mean(z²).

Whatever the reduction, the logged values are comparable across batch sizes:
``contrastive`` is the mean CE per masked frame (nats; fairseq logs bits), ``diversity`` is
(GV − Σ ppl)/GV in [0, 1] and ``l2`` is mean(z²).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def sample_negatives(utterance_of_frame: torch.Tensor, num_negatives: int,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Distractor indices for a flat list of N masked frames.

    ``utterance_of_frame``: [N] int64, the batch row of each masked frame, sorted ascending
    (the order ``tensor[mask]`` produces). Returns ``(negatives [N, K], usable [N])``: the
    indices (into the same flat list) of K frames of the same utterance other than the frame
    itself, drawn uniformly with replacement; ``usable`` is False for frames whose utterance
    has fewer than 2 masked frames (they have no distractor and are left out of the loss).
    """
    N = utterance_of_frame.shape[0]
    device = utterance_of_frame.device
    if N == 0:
        return torch.zeros(0, num_negatives, dtype=torch.long, device=device), torch.zeros(0, dtype=torch.bool, device=device)
    # Start offset and size of each utterance's block of masked frames.
    _, counts = torch.unique_consecutive(utterance_of_frame, return_counts=True)
    offsets = torch.cumsum(counts, 0) - counts
    block = torch.repeat_interleave(torch.arange(counts.shape[0], device=device), counts)
    start, size = offsets[block], counts[block]
    position = torch.arange(N, device=device) - start
    # Uniform over the size - 1 other frames: draw in [0, size-2] and skip the frame itself.
    others = (size - 1).clamp_min(1)
    # no generator argument when there is none: torch.compile cannot trace generator=None
    # with symbolic shapes ("SymIntArrayRef expected to contain only concrete integers")
    rand = torch.rand(N, num_negatives, device=device, **({"generator": generator} if generator is not None else {}))
    draw = (rand * others[:, None]).long()
    draw = torch.minimum(draw, others[:, None] - 1)
    draw = draw + (draw >= position[:, None]).long()
    usable = size >= 2
    # A frame alone in its utterance has no other frame: point it at itself (in range, and
    # left out of the loss through ``usable``) instead of one past its block.
    draw = draw.masked_fill(~usable[:, None], 0)
    return start[:, None] + draw, usable


def contrastive_logits(context: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor,
                       logit_temp: float = 0.1) -> torch.Tensor:
    """[N, 1 + K] logits: cosine(c'_t, q'_t) and cosine(c'_t, q'_d) for the K distractors, / τ_c.

    ``context``, ``targets``: [N, D]; ``negatives``: [N, K] indices into ``targets``.
    A distractor equal to the positive gets −inf (it would be a false negative).
    """
    context, targets = context.float(), targets.float()
    distractors = targets[negatives]                                          # [N, K, D], gathered once
    candidates = torch.cat([targets[:, None, :], distractors], dim=1)       # [N, 1+K, D]
    logits = F.cosine_similarity(context[:, None, :], candidates, dim=-1) / logit_temp
    same = (distractors == targets[:, None, :]).all(dim=-1)
    return torch.cat([logits[:, :1], logits[:, 1:].masked_fill(same, float("-inf"))], dim=1)


def diversity_loss(prob_perplexity: torch.Tensor, entries: int) -> torch.Tensor:
    """Σ_g (V − ppl_g): zero when every codebook is used uniformly."""
    return (entries - prob_perplexity.float()).sum()


def l2_penalty(features: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """mean(z²) over the valid frames of the CNN output ``features`` [B, T, C]."""
    sq = features.float().pow(2)
    if frame_mask is None:
        return sq.mean()
    m = frame_mask[..., None].float()
    return (sq * m).sum() / (m.sum() * features.shape[-1]).clamp_min(1.0)


@dataclass
class LossWeights:
    diversity: float = 0.1
    l2: float = 10.0
    reduction: str = "sum"  # "sum" (thesis/nanow2v2) or "mean" (fairseq-equivalent)


def combine_losses(ce: torch.Tensor, prob_perplexity: torch.Tensor, l2: torch.Tensor, groups: int, entries: int,
                   weights: LossWeights) -> dict[str, torch.Tensor]:
    """Total loss to optimise plus the comparable per-frame values to log.

    ``ce``: [N] per-masked-frame cross-entropy (frames with distractors only).
    """
    n = ce.shape[0]
    div = diversity_loss(prob_perplexity, entries)
    div_fraction = div / (groups * entries)
    if weights.reduction == "sum":
        total = ce.sum() + weights.diversity * div + weights.l2 * l2
    elif weights.reduction == "mean":
        total = ce.sum() / max(n, 1) + weights.diversity * div_fraction + weights.l2 * l2
    else:
        raise ValueError(f"unknown loss reduction {weights.reduction!r}; use 'sum' or 'mean'")
    return {
        "loss": total,
        "contrastive": ce.detach().sum() / max(n, 1),
        "diversity": div_fraction.detach(),
        "l2": l2.detach(),
        "masked_frames": torch.tensor(float(n), device=ce.device),
    }
