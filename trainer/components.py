"""Building blocks of the wav2vec 2.0 network (thesis §5.2.1), one small module each.

The layout follows ``torchaudio.models.wav2vec2.components``: a feature encoder (7 strided
convolutions), a feature projection (LayerNorm + Linear), a convolutional relative positional
embedding and a post-LN (or pre-LN) transformer. Every module takes explicit lengths or masks
so that zero padding inside a batch never changes the output on the valid part of an
utterance (see ``FeatureEncoder``).

Names of the matching fairseq options are given in the docstrings; ``trainer/hf.py`` maps the
parameters to and from Hugging Face ``transformers`` and fairseq checkpoints.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Padding per conv layer of the 7-layer feature encoder.
#  "50hz": thesis §5.2.1 / nanow2v2, exactly T // 320 frames (50 per second);
#  "none": fairseq / Hugging Face, floor((T - 400) / 320) + 1 frames (about 49.9 per second).
ENCODER_PADDINGS = {"50hz": (3, 1, 1, 1, 1, 0, 0), "none": (0, 0, 0, 0, 0, 0, 0)}


ACTIVATIONS = ("gelu_tanh", "gelu", "relu")


def activation_fn(name: str):
    """Return the activation called ``name``: 'gelu_tanh' (thesis, nanow2v2), 'gelu' (exact; fairseq,
    HF) or 'relu' (fairseq checkpoints trained with ``activation_fn=relu``)."""
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu
    if name == "relu":
        return F.relu
    raise ValueError(f"unknown activation {name!r}; use one of {', '.join(ACTIVATIONS)}")


class GradMultiply(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``scale`` in the backward pass.

    fairseq ``feature_grad_mult`` (0.1 for pre-training): slows the CNN down relative to the
    transformer, which the wav2vec 2.0 recipe needs for stability.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def conv_output_lengths(lengths: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """Number of output frames of a Conv1d for inputs of ``lengths`` valid samples."""
    return torch.div(lengths + 2 * padding - kernel, stride, rounding_mode="floor") + 1


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Boolean ``[B, max_len]`` mask, True on the first ``lengths[b]`` positions of row b."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class ChannelNorm(nn.Module):
    """GroupNorm with one group per channel (fairseq ``Fp32GroupNorm(512, 512)``), padding-aware.

    Each channel is normalised over time. With ``mask`` the mean and variance are taken over the
    valid frames only, so a padded utterance is normalised exactly like the same utterance
    alone (the failure mode of huggingface/transformers#21534). Without a mask this equals
    ``nn.GroupNorm(C, C)``. Always computed in float32 (also under bf16 autocast): the
    statistics over thousands of frames are the numerically weakest point of the CNN.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: [B, C, T]; ``mask``: [B, T] bool (True = valid) or None."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            if mask is None:
                # one fused kernel over the CNN's largest activation (a third of its backward time
                # went to separate elementwise passes)
                return F.group_norm(x, x.shape[1], self.weight.float(), self.bias.float(), self.eps)
            m = mask[:, None, :].float()
            count = m.sum(dim=-1, keepdim=True).clamp_min(1.0)
            mean = (x * m).sum(dim=-1, keepdim=True) / count
            var = ((x - mean).pow(2) * m).sum(dim=-1, keepdim=True) / count
            y = (x - mean) * torch.rsqrt(var + self.eps)
            y = y * self.weight[None, :, None].float() + self.bias[None, :, None].float()
        # Stays float32; under autocast the next conv casts its input itself.
        return y


class ConvLayerBlock(nn.Module):
    """Conv1d → optional norm → GELU: one layer of the feature encoder.

    ``norm`` is 'group' (per-channel GroupNorm, BASE, fairseq ``extractor_mode=default`` on
    layer 0 only), 'layer' (LayerNorm over channels, fairseq ``extractor_mode=layer_norm``,
    every layer) or None.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, padding: int,
                 bias: bool, norm: str | None, activation: str):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=bias)
        if norm == "group":
            self.norm = ChannelNorm(out_channels)
        elif norm == "layer":
            self.norm = nn.LayerNorm(out_channels)
        elif norm is None:
            self.norm = None
        else:
            raise ValueError(f"unknown conv norm {norm!r}")
        self.act = activation_fn(activation)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x``: [B, C_in, T_in], ``lengths``: valid input samples per row (or None = all valid)."""
        x = self.conv(x)
        mask = None
        if lengths is not None:
            lengths = conv_output_lengths(lengths, self.kernel, self.stride, self.padding)
            mask = length_mask(lengths, x.shape[-1])
        if isinstance(self.norm, ChannelNorm):
            x = self.norm(x, mask)
        elif self.norm is not None:
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        x = self.act(x)
        if mask is not None:
            # Frames past the valid length would not exist for the utterance alone; zero them so
            # the next layer sees exactly the zero padding it would see without batching.
            x = x * mask[:, None, :].to(x.dtype)
        return x, lengths


class FeatureEncoder(nn.Module):
    """The 7-layer CNN that turns 16 kHz samples into latent features Z (thesis §5.2.1).

    fairseq ``conv_feature_layers="[(512,10,5)] + [(512,3,2)]*4 + [(512,2,2)]*2"``,
    ``conv_bias=False``. ``padding`` picks the 50 frames/s variant ("50hz", thesis) or the
    unpadded fairseq/HF variant ("none").

    Padding inside a batch does not leak: padded input samples are zeroed, the GroupNorm uses
    statistics over valid frames and every layer zeroes frames past the valid length, so the
    valid frames of a padded utterance equal the frames of the same utterance on its own.
    """

    def __init__(self, channels: list[int], kernels: list[int], strides: list[int], padding: str = "50hz",
                 bias: bool = False, norm: str = "group", activation: str = "gelu_tanh"):
        super().__init__()
        if padding not in ENCODER_PADDINGS:
            raise ValueError(f"unknown feature-encoder padding {padding!r}; use one of {list(ENCODER_PADDINGS)}")
        pads = ENCODER_PADDINGS[padding]
        if not (len(channels) == len(kernels) == len(strides) == len(pads)):
            raise ValueError("feature encoder needs 7 channels, kernels and strides")
        layers = []
        in_ch = 1
        for i, (ch, k, s, p) in enumerate(zip(channels, kernels, strides, pads)):
            layer_norm = norm if norm == "layer" or i == 0 else None
            layers.append(ConvLayerBlock(in_ch, ch, k, s, p, bias, layer_norm, activation))
            in_ch = ch
        self.layers = nn.ModuleList(layers)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Number of latent frames for inputs of ``lengths`` samples."""
        for layer in self.layers:
            lengths = conv_output_lengths(lengths, layer.kernel, layer.stride, layer.padding)
        return lengths

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``audio``: [B, T] → features [B, T', C] and frame lengths [B] (None if ``lengths`` is None)."""
        x = audio
        if lengths is not None and bool((lengths < x.shape[-1]).any()):
            x = x * length_mask(lengths, x.shape[-1]).to(x.dtype)
        elif lengths is not None:
            # No row is padded: skip the per-layer masking (a full extra pass over every
            # activation) and just compute the frame counts.
            x, _ = self.forward(audio, None)
            return x, self.output_lengths(lengths)
        x = x[:, None, :]
        for layer in self.layers:
            x, lengths = layer(x, lengths)
        return x.transpose(1, 2), lengths


class FeatureProjection(nn.Module):
    """LayerNorm(C) → Linear(C → d) → dropout (fairseq ``layer_norm`` + ``post_extract_proj``).

    Returns the projected features and the normalised features (the quantizer input).
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim, eps=eps)
        self.linear = nn.Linear(in_dim, out_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.norm(x)
        return self.dropout(self.linear(normed)), normed


class ConvPositionalEmbedding(nn.Module):
    """Relative positional embedding: grouped Conv1d with weight norm, then GELU (thesis §5.2.1).

    fairseq ``conv_pos=128``, ``conv_pos_groups=16``; padding k//2 on both sides, the last
    frame dropped for even kernels ("SamePad"), so the output has the input's length. Computed
    in float32 under autocast: NVIDIA's port requires an fp32 positional conv for bf16.
    """

    def __init__(self, dim: int, kernel: int, groups: int, activation: str = "gelu_tanh"):
        super().__init__()
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        # fairseq init: normal(0, sqrt(4 / (k * d))), bias 0.
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4.0 / (kernel * dim)))
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.remove = 1 if kernel % 2 == 0 else 0
        self.act = activation_fn(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: [B, T, d] with padded frames already zeroed → [B, T, d]."""
        dtype = x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = self.conv(x.float().transpose(1, 2))
            if self.remove:
                y = y[..., : -self.remove]
            y = self.act(y).transpose(1, 2)
        return y.to(dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection and ``F.scaled_dot_product_attention``.

    ``key_mask`` ([B, T] bool, True = valid frame) hides padded frames from every query; when no
    row is padded no mask is passed, which lets SDPA pick the flash kernel on GPU.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"model dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class FeedForward(nn.Module):
    """Linear(d → ffn) → GELU → dropout → Linear(ffn → d)."""

    def __init__(self, dim: int, hidden: int, activation: str, activation_dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = activation_fn(activation)
        self.dropout = nn.Dropout(activation_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))


class EncoderLayer(nn.Module):
    """One transformer block; post-LN (BASE): ``norm(x + attn(x))`` then ``norm(x + ffn(x))``.

    ``norm_first=True`` gives the pre-LN block of fairseq ``layer_norm_first`` (LV-60k LARGE).
    Dropout sits on the attention probabilities, the attention output and the FFN output
    (the three places named in thesis §5.2.1).
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, attention_dropout: float,
                 activation_dropout: float, activation: str, norm_first: bool, eps: float = 1e-5):
        super().__init__()
        self.attention = SelfAttention(dim, heads, attention_dropout)
        self.attn_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn = FeedForward(dim, ffn_dim, activation, activation_dropout)
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        if self.norm_first:
            x = x + self.dropout(self.attention(self.attn_norm(x), key_mask))
            return x + self.dropout(self.ffn(self.ffn_norm(x)))
        x = self.attn_norm(x + self.dropout(self.attention(x, key_mask)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class ContextNetwork(nn.Module):
    """Positional conv + transformer: the context network g(·) that maps Ẑ' to C.

    Post-LN (``norm_first=False``): x + pos(x) → LayerNorm → dropout → layers.
    Pre-LN: x + pos(x) → dropout → layers → LayerNorm. Padded frames are zeroed before the
    positional conv (so they act as the conv's zero padding) and masked as attention keys.
    """

    def __init__(self, dim: int, layers: int, heads: int, ffn_dim: int, pos_kernel: int, pos_groups: int,
                 dropout: float, attention_dropout: float, activation_dropout: float, activation: str,
                 pos_activation: str, norm_first: bool = False, eps: float = 1e-5):
        super().__init__()
        self.pos_conv = ConvPositionalEmbedding(dim, pos_kernel, pos_groups, pos_activation)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first
        self.layers = nn.ModuleList(
            EncoderLayer(dim, heads, ffn_dim, dropout, attention_dropout, activation_dropout, activation,
                         norm_first, eps)
            for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: [B, T, d]; ``frame_mask``: [B, T] bool (True = valid) or None."""
        if frame_mask is not None:
            x = x * frame_mask[..., None].to(x.dtype)
            # An all-valid batch needs no attention mask (lets SDPA use its fastest kernel).
            key_mask = None if bool(frame_mask.all()) else frame_mask
        else:
            key_mask = None
        x = x + self.pos_conv(x)
        if not self.norm_first:
            x = self.norm(x)
        x = self.dropout(x)
        for layer in self.layers:
            x = layer(x, key_mask)
        if self.norm_first:
            x = self.norm(x)
        return x
