"""Procedural DTMF audio QA: determinism, answers from metadata, digits decodable from the waveform (FFT
peaks) and from the log-mel features (mel peaks, tone count from frame energy)."""
import numpy as np
import pytest

from jaxmm.data.audioqa import COLS, KEYPAD, ROWS, AudioQA, dtmf_frequencies
from jaxmm.ops.audio import hz_to_mel, mel_to_hz

N = 12


@pytest.fixture(scope="module")
def data():
    ds = AudioQA(N, seed=1, kinds=("digit", "count", "sequence", "last"))
    return ds, [ds[i] for i in range(N)]


def _digit_of(f_lo, f_hi):
    r = int(np.argmin(np.abs(np.asarray(ROWS) - f_lo)))
    c = int(np.argmin(np.abs(np.asarray(COLS) - f_hi)))
    return next((d for d, rc in KEYPAD.items() if rc == (r, c)), "?")


def test_deterministic_and_shapes(data):
    ds, examples = data
    again = AudioQA(N, seed=1, kinds=("digit", "count", "sequence", "last"))
    np.testing.assert_array_equal(again[3]["audio"], examples[3]["audio"])
    np.testing.assert_array_equal(again.waveform(3), ds.waveform(3))
    assert not np.array_equal(AudioQA(N, seed=2)[3]["audio"], examples[3]["audio"])
    assert not np.array_equal(AudioQA(N, seed=1, split="eval")[3]["audio"], examples[3]["audio"])
    ex = examples[0]
    assert ex["audio"].shape == (100, 80) and ex["audio"].dtype == np.float32
    assert ex["conversations"] == [("user", "<audio>\n" + ex["question"]), ("assistant", ex["answer"])]


def test_answers_follow_from_metadata(data):
    ordinals = ["first", "second", "third", "fourth"]
    for ex in data[1]:
        digits, n = ex["digits"], int(ex["num_tones"])
        assert len(digits) == n and (ex["segments"][n:] == -1).all()
        expected = {"count": str(n), "sequence": digits, "last": digits[-1]}
        if ex["kind"] == "digit":
            j = next(i for i, o in enumerate(ordinals) if f" {o} " in ex["question"])
            assert ex["answer"] == digits[j]
        else:
            assert ex["answer"] == expected[ex["kind"]]


def test_digits_decodable_from_waveform_peaks(data):
    ds, examples = data
    for i, ex in enumerate(examples):
        wave = ds.waveform(i).astype(np.float64)
        decoded = ""
        for s, e in ex["segments"][:int(ex["num_tones"])]:
            seg = wave[s:e] * np.hanning(e - s)
            spec = np.abs(np.fft.rfft(seg, n=16000))  # 1 Hz bins
            lo = 600 + int(np.argmax(spec[600:1100]))
            hi = 1100 + int(np.argmax(spec[1100:1600]))
            assert min(abs(lo - f) for f in ROWS) < 8 and min(abs(hi - f) for f in COLS) < 8
            decoded += _digit_of(lo, hi)
        assert decoded == ex["digits"]


def test_digits_and_count_decodable_from_logmel(data):
    centres = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(8000.0), 82))[1:-1]
    low = np.nonzero((centres > 600) & (centres < 1100))[0]
    high = np.nonzero((centres > 1100) & (centres < 1600))[0]
    for ex in data[1]:
        mel = ex["audio"]
        decoded = ""
        for s, e in ex["segments"][:int(ex["num_tones"])]:
            frames = [t for t in range(mel.shape[0]) if t * 160 - 200 >= s and t * 160 + 200 <= e]
            avg = mel[frames].mean(0)
            decoded += _digit_of(centres[low[np.argmax(avg[low])]], centres[high[np.argmax(avg[high])]])
        assert decoded == ex["digits"]
        # tone count: runs of frames whose loudest mel bin is within 0.5 (2 decades of power) of the clip's max
        loud = mel.max(-1) > mel.max() - 0.5
        runs = int(loud[0]) + int(np.sum(loud[1:] & ~loud[:-1]))
        assert runs == int(ex["num_tones"])


def test_errors():
    with pytest.raises(ValueError, match="digit"):
        dtmf_frequencies("a")
    with pytest.raises(ValueError, match="duration"):
        AudioQA(4, max_digits=6, duration=1.0)
    with pytest.raises(ValueError, match="kinds"):
        AudioQA(4, kinds=("pitch",))
    with pytest.raises(IndexError):
        AudioQA(4)[4]
