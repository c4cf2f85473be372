"""Whisper log-mel front end against HF WhisperFeatureExtractor (fixture), a float64 numpy reference and
closed forms (a bin-centred sine's STFT magnitude; a tone's energy in the right mel filter)."""
import os

import jax
import numpy as np
import pytest

from jaxmm.ops.audio import hz_to_mel, log_mel_spectrogram, mel_filter_bank, mel_to_hz, power_spectrogram

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "whisper_logmel.npz")


def test_matches_hf_whisper_feature_extractor():
    ref = np.load(FIXTURE)
    np.testing.assert_allclose(mel_filter_bank(), ref["mel_filters"], atol=1e-7, rtol=0)
    wave = ref["waveform"]
    one_s = np.asarray(log_mel_spectrogram(np.pad(wave, (0, 16000 - wave.size))))
    assert one_s.shape == (100, 80)
    np.testing.assert_allclose(one_s.T, ref["log_mel_1s"], atol=1e-4, rtol=0)
    thirty = np.asarray(jax.jit(log_mel_spectrogram)(np.pad(wave, (0, 480000 - wave.size))))
    assert thirty.shape == (3000, 80)
    np.testing.assert_allclose(thirty[:100].T, ref["log_mel_30s_first_100"], atol=1e-4, rtol=0)


def _reference_float64(wave, n_fft=400, hop=160, n_mels=80, sr=16000):
    x = np.pad(wave.astype(np.float64), (n_fft // 2, n_fft // 2), mode="reflect")
    n = 1 + (x.size - n_fft) // hop
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann
    k = np.arange(n_fft // 2 + 1)
    dft = np.exp(-2j * np.pi * np.outer(np.arange(n_fft), k) / n_fft)
    frames = np.stack([x[i * hop:i * hop + n_fft] for i in range(n)]) * window
    power = np.abs(frames @ dft)[:-1] ** 2
    mel = power @ mel_filter_bank(sample_rate=sr, n_fft=n_fft, n_mels=n_mels).astype(np.float64)
    log = np.log10(np.maximum(mel, 1e-10))
    return (np.maximum(log, log.max() - 8.0) + 4.0) / 4.0


def test_batched_against_float64_reference_with_per_example_clamp():
    rng = np.random.default_rng(0)
    waves = np.stack([rng.normal(size=4000), 1e-3 * np.sin(np.arange(4000) * 0.3)]).astype(np.float32)
    out = np.asarray(log_mel_spectrogram(waves, n_mels=40))
    assert out.shape == (2, 25, 40)
    for b in range(2):
        np.testing.assert_allclose(out[b], _reference_float64(waves[b], n_mels=40), atol=1e-4, rtol=0)


def test_closed_forms_bin_centred_sine_and_tone_in_its_mel_filter():
    sr, n_fft = 16000, 400
    t = np.arange(8000) / sr
    k, amp = 25, 0.7  # 25 * 40 Hz = 1000 Hz, exactly on an rfft bin
    power = np.asarray(power_spectrogram((amp * np.cos(2 * np.pi * k * sr / n_fft * t)).astype(np.float32)))
    assert power.shape == (50, 201)
    interior = power[5:-5]
    # periodic Hann sums to n_fft / 2, so a bin-centred cosine gives |X_k| = amp / 2 * n_fft / 2
    np.testing.assert_allclose(interior[:, k], (amp * n_fft / 4) ** 2, rtol=1e-4)
    assert (interior.argmax(-1) == k).all()
    centres = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), 82))[1:-1]
    for m in (10, 30, 55):
        tone = np.sin(2 * np.pi * centres[m] * t).astype(np.float32)
        logmel = np.asarray(log_mel_spectrogram(tone))
        assert (logmel[5:-5].argmax(-1) == m).all(), (m, centres[m])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel([0, 500, 1000, 4000])), [0, 500, 1000, 4000], atol=1e-9)
    assert hz_to_mel(1000.0) == pytest.approx(15.0)


def test_argument_errors():
    with pytest.raises(ValueError, match="waveform"):
        log_mel_spectrogram(np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="waveform"):
        log_mel_spectrogram(np.zeros(1000, np.int32))
    with pytest.raises(ValueError, match="f_min/f_max"):
        mel_filter_bank(f_max=9000.0)
    with pytest.raises(ValueError, match="n_mels"):
        mel_filter_bank(n_mels=0)
