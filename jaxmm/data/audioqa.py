"""Audio QA, procedural and seeded (no downloads): DTMF tone sequences whose digits are asked for, given to the
model as Whisper log-mel features.

Each digit is the sum of two sines (its keypad row and column frequencies, as telephone DTMF):
  1 2 3 / 4 5 6 / 7 8 9 / _ 0 _  with rows 697, 770, 852, 941 Hz and columns 1209, 1336, 1477 Hz.
A clip of `duration` seconds at 16 kHz holds 1..max_digits tones (each 80-140 ms, 40-80 ms apart, 5 ms
ramps, random amplitude) over faint white noise.

Each example is a deterministic function of (seed, split, index):
  audio          float32 [duration * sample_rate // 160, n_mels]  `jaxmm.ops.audio.log_mel_spectrogram`
  conversations  [("user", "<audio>\\n" + question), ("assistant", answer)]
  question, answer, kind   kind in {"digit", "count", "sequence", "last"}
  digits         str   the digits in order, e.g. "4071"
  segments       int32 [max_digits, 2] (start, end) sample of each tone, end exclusive, -1 past num_tones
  num_tones      int32 scalar
`AudioQA.waveform(index)` re-synthesises the float32 waveform [samples] of an example.

Questions:  digit "What is the <ordinal> digit?" -> "7";  count "How many tones are there?" -> "3";
            sequence "What are the digits?" -> "407";   last "What is the last digit?" -> "7".
"""
from __future__ import annotations

import functools

import numpy as np

from jaxmm.checks import check_positive, fail

ROWS = (697.0, 770.0, 852.0, 941.0)
COLS = (1209.0, 1336.0, 1477.0)
KEYPAD = {"1": (0, 0), "2": (0, 1), "3": (0, 2), "4": (1, 0), "5": (1, 1), "6": (1, 2),
          "7": (2, 0), "8": (2, 1), "9": (2, 2), "0": (3, 1)}
KINDS = ("digit", "count", "sequence", "last")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
_SPLITS = {"train": 0, "eval": 1, "test": 2}


def dtmf_frequencies(digit: str) -> tuple[float, float]:
    """(row Hz, column Hz) of a digit."""
    if digit not in KEYPAD:
        fail("digit", "one of '0'..'9'", repr(digit))
    r, c = KEYPAD[digit]
    return ROWS[r], COLS[c]


@functools.lru_cache(maxsize=8)
def _jitted_logmel(sample_rate: int, n_mels: int):
    import jax

    from jaxmm.ops.audio import log_mel_spectrogram

    fn = jax.jit(functools.partial(log_mel_spectrogram, sample_rate=sample_rate, n_mels=n_mels))
    try:
        cpu = jax.devices("cpu")[0]  # features are made on the host, not on the accelerator
    except RuntimeError:
        cpu = None

    def run(wave):
        if cpu is None:
            return np.asarray(fn(wave))
        with jax.default_device(cpu):
            return np.asarray(fn(wave))

    return run


class AudioQA:
    """Random-access source of DTMF audio QA examples (see the module docstring).

    Args:
      num_examples: length of the source.
      seed / split: the stream ("train" / "eval" / "test" are independent).
      max_digits: most tones per clip (1..8).
      duration: clip length in seconds (long enough for max_digits tones).
      kinds: question kinds to draw from (uniformly).
      noise: standard deviation of the white noise (tones have amplitude 0.2-0.5 per sine).
      sample_rate / n_mels: front-end settings (hop 160, n_fft 400 as Whisper).
    """

    def __init__(self, num_examples: int = 10_000, *, seed: int = 0, split: str = "train", max_digits: int = 4,
                 duration: float = 1.0, kinds=("digit", "count", "sequence"), noise: float = 0.02,
                 sample_rate: int = 16000, n_mels: int = 80):
        check_positive("num_examples", num_examples)
        check_positive("sample_rate", sample_rate)
        check_positive("n_mels", n_mels)
        if split not in _SPLITS:
            fail("split", f"one of {tuple(_SPLITS)}", repr(split))
        if not 1 <= max_digits <= len(ORDINALS):
            fail("max_digits", f"1..{len(ORDINALS)}", max_digits)
        if duration < 0.25 * max_digits:
            fail("duration", f">= {0.25 * max_digits} s for max_digits={max_digits}", duration)
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            fail("kinds", f"a non-empty subset of {KINDS}", tuple(kinds))
        if noise < 0:
            fail("noise", "a non-negative number", noise)
        self.num_examples, self.seed, self.split = int(num_examples), int(seed), split
        self.max_digits, self.kinds, self.noise = int(max_digits), tuple(kinds), float(noise)
        self.sample_rate, self.n_mels = int(sample_rate), int(n_mels)
        self.num_samples = int(round(duration * sample_rate))
        self.num_frames = self.num_samples // 160

    def __len__(self) -> int:
        return self.num_examples

    def _rng(self, index: int) -> np.random.Generator:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range [0, {self.num_examples})")
        return np.random.default_rng([self.seed, _SPLITS[self.split], index])

    def _plan(self, rng):
        """Digits, segments, amplitudes, kind, question and answer: everything but the noise."""
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        n = int(rng.integers(1, self.max_digits + 1))
        digits = "".join(str(d) for d in rng.integers(0, 10, size=n))
        sr = self.sample_rate
        lengths = rng.integers(int(0.08 * sr), int(0.14 * sr) + 1, size=n)
        gaps = rng.integers(int(0.04 * sr), int(0.08 * sr) + 1, size=max(n - 1, 0))
        total = int(lengths.sum() + gaps.sum())
        start = int(rng.integers(int(0.02 * sr), self.num_samples - total - int(0.02 * sr) + 1))
        segments = []
        for i in range(n):
            segments.append((start, start + int(lengths[i])))
            start += int(lengths[i]) + (int(gaps[i]) if i < n - 1 else 0)
        amps = rng.uniform(0.2, 0.5, size=(n, 2))
        phases = rng.uniform(0, 2 * np.pi, size=(n, 2))
        if kind == "digit":
            j = int(rng.integers(n))
            question, answer = f"What is the {ORDINALS[j]} digit?", digits[j]
        elif kind == "count":
            question, answer = "How many tones are there?", str(n)
        elif kind == "sequence":
            question, answer = "What are the digits?", digits
        else:
            question, answer = "What is the last digit?", digits[-1]
        return kind, digits, segments, amps, phases, question, answer

    def _synthesise(self, rng, digits, segments, amps, phases) -> np.ndarray:
        sr = self.sample_rate
        wave = rng.normal(0.0, self.noise, size=self.num_samples)
        ramp = int(0.005 * sr)
        for d, (s, e), a, p in zip(digits, segments, amps, phases):
            t = np.arange(e - s) / sr
            f_lo, f_hi = dtmf_frequencies(d)
            tone = a[0] * np.sin(2 * np.pi * f_lo * t + p[0]) + a[1] * np.sin(2 * np.pi * f_hi * t + p[1])
            env = np.minimum(1.0, np.minimum(np.arange(e - s) + 1, np.arange(e - s)[::-1] + 1) / ramp)
            wave[s:e] += tone * env
        return wave.astype(np.float32)

    def waveform(self, index: int) -> np.ndarray:
        """float32 [num_samples] waveform of example `index`."""
        rng = self._rng(index)
        _, digits, segments, amps, phases, _, _ = self._plan(rng)
        return self._synthesise(rng, digits, segments, amps, phases)

    def __getitem__(self, index: int) -> dict:
        rng = self._rng(index)
        kind, digits, segments, amps, phases, question, answer = self._plan(rng)
        wave = self._synthesise(rng, digits, segments, amps, phases)
        seg = np.full((self.max_digits, 2), -1, np.int32)
        seg[:len(segments)] = segments
        return {
            "audio": _jitted_logmel(self.sample_rate, self.n_mels)(wave),
            "conversations": [("user", "<audio>\n" + question), ("assistant", answer)],
            "question": question, "answer": answer, "kind": kind,
            "digits": digits, "segments": seg, "num_tones": np.int32(len(digits)),
        }


def audioqa_dataset(num_examples: int = 10_000, **kwargs):
    """`AudioQA(...)` as a `grain.MapDataset`."""
    import grain

    return grain.MapDataset.source(AudioQA(num_examples, **kwargs))
