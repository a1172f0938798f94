"""Gumbel-softmax product quantizer (thesis §5.2.2, "Quantization"; fairseq ``GumbelVectorQuantizer``).

Each normalised latent frame z_t is classified by a Linear layer into G codebooks of V entries;
a hard gumbel-softmax picks one entry per codebook (straight-through gradient) and the picked
codewords (dimension d_G each) are concatenated into q_t (dimension G·d_G). BASE: G=2, V=320,
d_G=128. The temperature τ decays from 2 to 0.5 by ×0.999995 per optimizer step; it lives in a
buffer so it is saved with the weights and never triggers a torch.compile recompile.

The softmax, the gumbel noise and the codeword mixing run in float32 (fairseq does the same),
also under bf16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def perplexity(probs: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of each row of ``probs`` ([G, V] → [G]); the 1e-7 is fairseq's."""
    return torch.exp(-(probs * torch.log(probs + 1e-7)).sum(dim=-1))


class GumbelQuantizer(nn.Module):
    """Quantize [N, in_dim] frames into [N, G·d_G] codevectors.

    Returns ``(q, stats)`` with ``stats``: ``prob_perplexity`` [G] (softmax probabilities
    averaged over the frames; drives the diversity loss), ``code_perplexity`` [G] (of the
    argmax code counts; the collapse diagnostic) and ``codes`` [N, G] (argmax indices).
    """

    def __init__(self, in_dim: int, groups: int = 2, entries: int = 320, codevector_dim: int = 256,
                 temperature: tuple[float, float, float] = (2.0, 0.5, 0.999995)):
        super().__init__()
        if codevector_dim % groups:
            raise ValueError(f"codevector_dim {codevector_dim} must be divisible by {groups} codebooks")
        self.groups, self.entries = groups, entries
        self.max_temp, self.min_temp, self.temp_decay = temperature
        self.weight_proj = nn.Linear(in_dim, groups * entries)
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)  # fairseq init
        nn.init.zeros_(self.weight_proj.bias)
        self.codevectors = nn.Parameter(torch.empty(groups, entries, codevector_dim // groups).uniform_())
        self.register_buffer("temperature", torch.tensor(float(self.max_temp)))

    def set_step(self, step: int) -> None:
        """τ = max(τ_max · decay^step, τ_min), computed from the step so resume is exact."""
        self.temperature.fill_(max(self.max_temp * self.temp_decay ** step, self.min_temp))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        N = x.shape[0]
        logits = self.weight_proj(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = logits.float().view(N, self.groups, self.entries)
            codes = logits.argmax(dim=-1)
            hard = F.one_hot(codes, self.entries).float()
            denom = max(N, 1)
            code_probs = hard.sum(dim=0) / denom
            avg_probs = logits.softmax(dim=-1).sum(dim=0) / denom
            if self.training:
                # Hard gumbel-softmax with a tensor τ (no host sync): one-hot forward,
                # softmax((logits + g) / τ) gradient (straight-through), like F.gumbel_softmax.
                gumbels = -torch.empty_like(logits).exponential_().log()
                soft = ((logits + gumbels) / self.temperature).softmax(dim=-1)
                index = soft.argmax(dim=-1)
                onehot = F.one_hot(index, self.entries).float() - soft.detach() + soft
            else:
                onehot = hard
            # [N, G, V] x [G, V, d] → [N, G, d]
            q = torch.einsum("ngv,gvd->ngd", onehot, self.codevectors.float()).reshape(N, -1)
        stats = {"prob_perplexity": perplexity(avg_probs), "code_perplexity": perplexity(code_probs), "codes": codes}
        return q, stats
