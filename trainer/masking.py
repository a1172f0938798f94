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


def span_mask(frame_lengths: torch.Tensor, max_frames: int, mask_prob: float = 0.5, span: int = 10,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean ``[B, max_frames]`` mask, True on masked frames.

    ``frame_lengths``: [B] int64 valid frames per row. Rows shorter than ``span`` (or with
    n_r = 0) get no mask.
    """
    device = frame_lengths.device
    B = frame_lengths.shape[0]
    num_positions = max(max_frames - span + 1, 1)
    # Valid start positions: a whole span fits inside the valid frames.
    valid_starts = (frame_lengths - span + 1).clamp_min(0)
    num_spans = torch.minimum(torch.div(frame_lengths * mask_prob, span, rounding_mode="floor").long(), valid_starts)
    scores = torch.rand(B, num_positions, device=device, generator=generator)
    positions = torch.arange(num_positions, device=device)
    scores = scores.masked_fill(positions[None, :] >= valid_starts[:, None], 2.0)  # never chosen
    # Rank of each position in a random order = a uniformly random subset of num_spans starts.
    ranks = scores.argsort(dim=1).argsort(dim=1)
    starts = (ranks < num_spans[:, None]).float()
    # A frame is masked if a span started at any of the previous `span` positions.
    covered = F.conv1d(F.pad(starts[:, None, :], (span - 1, 0)), torch.ones(1, 1, span, device=device))
    mask = covered[:, 0, :] > 0
    if mask.shape[1] < max_frames:
        mask = F.pad(mask, (0, max_frames - mask.shape[1]))
    return mask[:, :max_frames]
