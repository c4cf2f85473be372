"""Whisper's log-mel front end in pure JAX (Radford et al. 2022, `whisper/audio.py`; HF WhisperFeatureExtractor).

    waveform [..., samples] (16 kHz)
      -> reflect-pad n_fft//2 on both sides, frames of n_fft every hop_length samples, periodic Hann window
      -> |rfft|^2, dropping the last frame                          [..., samples // hop_length, 1 + n_fft//2]
      -> @ Slaney mel filter bank (Slaney mel scale, area-normalised, as librosa's default)   [..., frames, n_mels]
      -> log10(max(x, 1e-10)), then max(x, max over (frames, mels) of each example - 8), then (x + 4) / 4.

Whisper pads every clip to 30 s (480000 samples) before this; pass the padded waveform to reproduce its
features exactly (the per-example max, and so the clamp, sees the padding frames too). The output is
time-major `[..., frames, n_mels]`, the layout `jaxmm.models.audio.AudioEncoder` takes (HF returns the
transpose).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmm.checks import check_positive, fail

_F_SP = 200.0 / 3.0  # Slaney mel: linear 0..1 kHz at 200/3 Hz per mel ...
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0  # ... then logarithmic, 27 mels per factor 6.4


def hz_to_mel(f):
    """Slaney mel scale (librosa `hz_to_mel(htk=False)`), float64 numpy."""
    f = np.asarray(f, np.float64)
    safe = np.maximum(f, _MIN_LOG_HZ)
    return np.where(f >= _MIN_LOG_HZ, _MIN_LOG_MEL + np.log(safe / _MIN_LOG_HZ) / _LOGSTEP, f / _F_SP)


def mel_to_hz(m):
    """Inverse of `hz_to_mel`."""
    m = np.asarray(m, np.float64)
    return np.where(m >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), _F_SP * m)


def mel_filter_bank(*, sample_rate: int = 16000, n_fft: int = 400, n_mels: int = 80, f_min: float = 0.0,
                    f_max: float | None = None) -> np.ndarray:
    """Triangular Slaney-normalised mel filters, float32 `[1 + n_fft // 2, n_mels]` (a compile-time constant).

    Filter m rises linearly from mel point m to m+1 and falls to m+2 (n_mels + 2 points equally spaced on the
    Slaney mel scale between f_min and f_max, default sample_rate / 2), evaluated at the rfft bin
    frequencies k * sample_rate / n_fft, and scaled by 2 / (f_{m+2} - f_{m}) so each has unit area in Hz.
    """
    check_positive("sample_rate", sample_rate)
    check_positive("n_fft", n_fft)
    check_positive("n_mels", n_mels)
    f_max = sample_rate / 2.0 if f_max is None else float(f_max)
    if not 0.0 <= f_min < f_max <= sample_rate / 2.0:
        fail("f_min/f_max", f"0 <= f_min < f_max <= sample_rate/2 = {sample_rate / 2}", (f_min, f_max))
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, 1 + n_fft // 2)
    hz = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    widths = np.diff(hz)
    ramps = hz[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (hz[2:] - hz[:-2]))[:, None]
    return weights.T.astype(np.float32)


def power_spectrogram(waveform, *, n_fft: int = 400, hop_length: int = 160):
    """|STFT|^2 with a periodic Hann window, centred frames (reflect padding), the last frame dropped.

    waveform [..., samples] -> [..., samples // hop_length, 1 + n_fft // 2] float32.
    """
    check_positive("n_fft", n_fft)
    check_positive("hop_length", hop_length)
    waveform = jnp.asarray(waveform)
    if waveform.ndim < 1 or waveform.shape[-1] <= n_fft // 2:
        fail("waveform", f"shape [..., samples > n_fft // 2 = {n_fft // 2}]", f"shape {waveform.shape}")
    if not jnp.issubdtype(waveform.dtype, jnp.floating):
        fail("waveform", "a floating-point array", waveform.dtype)
    x = waveform.astype(jnp.float32)
    pad = n_fft // 2
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    n_frames = 1 + (x.shape[-1] - n_fft) // hop_length
    index = np.arange(n_frames)[:, None] * hop_length + np.arange(n_fft)[None, :]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = x[..., index] * jnp.asarray(window, jnp.float32)
    spec = jnp.fft.rfft(frames, axis=-1)
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    return power[..., :-1, :]


def log_mel_spectrogram(waveform, *, sample_rate: int = 16000, n_fft: int = 400, hop_length: int = 160,
                        n_mels: int = 80):
    """Whisper log-mel features: waveform [..., samples] -> [..., samples // hop_length, n_mels] float32.

    Each leading index is one example (its own max for the 8-decade clamp), as in Whisper's batched path.
    """
    power = power_spectrogram(waveform, n_fft=n_fft, hop_length=hop_length)
    filters = jnp.asarray(mel_filter_bank(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels))
    mel = jnp.matmul(power, filters, precision=jax.lax.Precision.HIGHEST)
    log_spec = jnp.log10(jnp.maximum(mel, 1e-10))
    log_spec = jnp.maximum(log_spec, jnp.max(log_spec, axis=(-2, -1), keepdims=True) - 8.0)
    return (log_spec + 4.0) / 4.0
