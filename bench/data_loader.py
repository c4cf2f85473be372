"""Throughput of the embedded data sets through the grain loader, against reading the raw source directly
(the ratio is the pipeline's cost), and the JAX log-mel against a NumPy float64 rfft implementation.

    JAX_PLATFORMS=cpu .venv/bin/python bench/data_loader.py [--examples 512]
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def _rate(fn, n):
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def _numpy_logmel(wave, n_fft=400, hop=160):
    from jaxmm.ops.audio import mel_filter_bank

    x = np.pad(wave.astype(np.float64), n_fft // 2, mode="reflect")
    idx = np.arange(1 + (x.size - n_fft) // hop)[:, None] * hop + np.arange(n_fft)
    power = np.abs(np.fft.rfft(x[idx] * np.hanning(n_fft + 1)[:-1], axis=-1))[:-1] ** 2
    log = np.log10(np.maximum(power @ mel_filter_bank().astype(np.float64), 1e-10))
    return (np.maximum(log, log.max() - 8) + 4) / 4


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--examples", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()
    import jax

    from jaxmm.data import AudioQA, ByteTokenizer, ConversationFormatter, TextVQA, make_loader
    from jaxmm.ops.audio import log_mel_spectrogram

    n, bs = args.examples, args.batch
    fmt = ConversationFormatter(ByteTokenizer(), max_len=64)
    print(f"| source | raw source (ex/s) | loader + formatter, batch {bs} (ex/s) | ratio |")
    print("|---|---|---|---|")
    for name, src in (("TextVQA 64 px", TextVQA(n)), ("TextVQA 96 px", TextVQA(n, image_size=96)),
                      ("AudioQA 1 s", AudioQA(n))):
        src[0]  # compile / warm caches
        raw = _rate(lambda: [src[i] for i in range(n)], n)
        it = make_loader(src, batch_size=bs, seed=0, transforms=[fmt], shard_index=0, shard_count=1)
        loaded = _rate(lambda: [next(it) for _ in range(n // bs)], n // bs * bs)
        print(f"| {name} | {raw:.0f} | {loaded:.0f} | {loaded / raw:.2f} |")
    wave = AudioQA(1).waveform(0)
    jitted = jax.jit(log_mel_spectrogram)
    jitted(wave).block_until_ready()
    reps = 200
    j = _rate(lambda: [jitted(wave).block_until_ready() for _ in range(reps)], reps)
    npy = _rate(lambda: [_numpy_logmel(wave) for _ in range(reps)], reps)
    print(f"\nlog-mel of 1 s at 16 kHz: JAX jit {1e3 / j:.2f} ms, NumPy float64 {1e3 / npy:.2f} ms "
          f"(JAX/NumPy speed ratio {j / npy:.2f}); backend {jax.default_backend()}")


if __name__ == "__main__":
    main()
