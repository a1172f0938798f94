"""Span masking of the latent sequence (thesis §5.2.2, "Masking").

For an utterance of T valid frames, n_r = floor(T · p / L) distinct start indices are drawn
uniformly from the positions where a whole span of L frames fits inside the valid part, and the
L frames from each start are masked; spans may overlap, so fewer than p·T frames end up masked
(about 40 % for p = 0.5, L = 10). Padding frames are never masked and never counted in T.

Vectorised over the batch (no Python loop per utterance, no host sync), so it runs on the GPU.
Every random draw takes an optional ``torch.Generator`` for deterministic validation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def span_starts(frame_lengths: torch.Tensor, max_frames: int, mask_prob: float = 0.5, span: int = 10,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean ``[B, max_frames]``, True where a span starts.

    Row b gets ``min(floor(T_b · p / L), T_b − L + 1)`` distinct starts drawn uniformly from
    ``0 .. T_b − L``, so every span lies whole inside the row's valid frames — the batch's
    longest row included. Rows shorter than ``span`` get none.
    """
    device = frame_lengths.device
    B = frame_lengths.shape[0]
    valid_starts = (frame_lengths - span + 1).clamp_min(0)
    num_spans = torch.minimum(torch.div(frame_lengths * mask_prob, span, rounding_mode="floor").long(), valid_starts)
    scores = torch.rand(B, max_frames, device=device, generator=generator)
    positions = torch.arange(max_frames, device=device)
    scores = scores.masked_fill(positions[None, :] >= valid_starts[:, None], 2.0)  # never chosen
    # Rank of each position in a random order = a uniformly random subset of num_spans starts.
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < num_spans[:, None]


def span_mask(frame_lengths: torch.Tensor, max_frames: int, mask_prob: float = 0.5, span: int = 10,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean ``[B, max_frames]`` mask, True on masked frames: the union of the spans of
    ``span_starts``.

    ``frame_lengths``: [B] int64 valid frames per row. Rows shorter than ``span`` (or with
    n_r = 0) get no mask.
    """
    starts = span_starts(frame_lengths, max_frames, mask_prob, span, generator).float()
    # A frame is masked if a span started at any of the previous `span` positions: a causal
    # box filter over the start indicators, as long as the row.
    kernel = torch.ones(1, 1, span, device=starts.device)
    covered = F.conv1d(F.pad(starts[:, None, :], (span - 1, 0)), kernel)
    return covered[:, 0, :] > 0
