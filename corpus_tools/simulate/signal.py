"""Pure signal maths of the simulation: active power, SNR, fitting a clip to a length, mixing.

Mixing SNR is measured on the *active* power of both signals (:func:`active_power`), so that
pauses and zero padding do not make an interferer look quieter than it sounds.
"""

from __future__ import annotations

import math

import numpy as np

from corpus_tools.simulate.conditions import Settings, load_settings


def frame_powers(x: np.ndarray, frame: int) -> np.ndarray:
    """Mean square of non-overlapping frames; a trailing partial frame is its own frame."""
    m = x.size // frame
    full = x[: m * frame].reshape(m, frame)
    # float32 accumulation over one 20 ms frame is exact enough and 4× faster than float64
    powers = np.einsum("ij,ij->i", full, full).astype(np.float64) / frame
    tail = x[m * frame:]
    if tail.size:
        powers = np.append(powers, float(np.dot(tail, tail)) / tail.size)
    return powers


def active_power(x: np.ndarray, settings: Settings | None = None) -> float:
    """Power of the active part of ``x``: mean square over frames that are active.

    A frame (20 ms) is active when its mean square is within ``threshold_db`` (40 dB) of the
    loudest frame and above the absolute floor (-100 dBFS). Speech pauses, leading/trailing
    silence and zero padding are thereby excluded, for speech and interferer alike, so that
    an SNR reads as "how loud is the interferer while it sounds, next to the speech while
    it is spoken". Returns 0.0 for an empty or silent signal. Scale invariant above the floor.
    """
    settings = settings or load_settings()
    if x.size == 0:
        return 0.0
    p = frame_powers(np.asarray(x, dtype=np.float32), settings.frame)
    top = float(p.max())
    if top <= settings.floor:
        return 0.0
    active = p >= max(settings.floor, top * 10.0 ** (-settings.threshold_db / 10.0))
    # weight frames by their length (the tail frame may be short)
    sizes = np.full(p.size, settings.frame, dtype=np.float64)
    tail = x.size % settings.frame
    if tail:
        sizes[-1] = tail
    return float(np.dot(p[active], sizes[active]) / sizes[active].sum())


def measure_snr(speech: np.ndarray, interference: np.ndarray,
                settings: Settings | None = None) -> float:
    """SNR in dB between two signals by :func:`active_power` (the definition mixing uses)."""
    ps, pn = active_power(speech, settings), active_power(interference, settings)
    if pn <= 0:
        return math.inf
    if ps <= 0:
        return -math.inf
    return 10.0 * math.log10(ps / pn)


def fit_length(x: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """Crop (random offset) or repeat (random start, cyclic) ``x`` to exactly ``n`` samples.

    Returns ``(y, offset, repeats)``: ``y[k] == x[(offset + k) % len(x)]``; ``repeats`` is how
    many times ``x`` (partly) occurs in ``y`` (1 for a crop).
    """
    if x.size == 0:
        raise ValueError("cannot fit an empty signal to a length")
    if x.size >= n:
        offset = int(rng.integers(0, x.size - n + 1))
        return x[offset:offset + n].copy(), offset, 1
    offset = int(rng.integers(0, x.size))
    reps = math.ceil((offset + n) / x.size)
    return np.tile(x, reps)[offset:offset + n].copy(), offset, reps


def place(x: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """Fit a speech partner into ``n`` samples without repeating it.

    Longer partners are cropped at a random offset; shorter ones are put at a random position
    with silence around them. Returns ``(y, offset_into_x, position_in_y)``.
    """
    if x.size >= n:
        offset = int(rng.integers(0, x.size - n + 1))
        return x[offset:offset + n].copy(), offset, 0
    position = int(rng.integers(0, n - x.size + 1))
    y = np.zeros(n, dtype=np.float32)
    y[position:position + x.size] = x
    return y, 0, position


def mix_at_snr(speech: np.ndarray, interferer: np.ndarray, snr_db: float,
               settings: Settings | None = None, *, interferer_power: float | None = None,
               inplace: bool = False) -> tuple[np.ndarray, float, float]:
    """``gain * (speech + scale * interferer)`` with the interferer at ``snr_db`` below the speech.

    ``scale`` sets the SNR on active power; ``gain`` (≤ 1) only kicks in when the mixture would
    peak above ``headroom_peak`` and scales speech and interferer alike (the SNR is unchanged),
    so that 16-bit shards never clip. Returns ``(mixture, scale, gain)``. ``inplace`` lets the
    mixture reuse the (float32) interferer's buffer; ``interferer_power`` skips measuring it.
    """
    settings = settings or load_settings()
    ps = active_power(speech, settings)
    pn = active_power(interferer, settings) if interferer_power is None else interferer_power
    if pn <= 0:
        raise ValueError("interferer is silent")
    # a silent utterance has no SNR to honour: mix the interferer at its own level
    scale = 1.0 if ps <= 0 else math.sqrt(ps / (pn * 10.0 ** (snr_db / 10.0)))
    if inplace and interferer.dtype == np.float32:
        y = np.multiply(interferer, np.float32(scale), out=interferer)
    else:
        y = interferer.astype(np.float32) * np.float32(scale)
    y += speech
    peak = max(float(y.max(initial=0.0)), -float(y.min(initial=0.0)))
    gain = 1.0
    if peak > settings.headroom_peak:
        gain = settings.headroom_peak / peak
        y *= np.float32(gain)
    return y.astype(np.float32, copy=False), scale, gain
