"""Throughput accounting: FLOPs of a compiled step, peak FLOP/s of known devices, MFU, and the profiler window.

MFU (model FLOPs utilisation) here = (FLOPs of one compiled train step on one device, from XLA's cost analysis)
x (steps in the interval) / (interval seconds x the device's peak FLOP/s for the run's compute dtype). The FLOPs
are XLA's count for the program that actually runs (after SPMD partitioning, so per device; rematerialised
forward passes count), not a 6*N*D estimate; the interval is wall time between two metrics records, so host
work (data, hooks) lowers it. On CPU and on devices missing from `PEAK_FLOPS` MFU is None (unknown), never a
made-up number; `config.train.peak_flops_per_device` supplies the peak for any device.
"""
from __future__ import annotations

import os

import jax

# Dense peak FLOP/s per JAX device, by compute dtype, from the vendors' data sheets. "float32" is the rate XLA
# runs float32 matmuls at by default: TF32 tensor cores on NVIDIA Ampere and later (JAX's default matmul
# precision), one bfloat16 pass on TPU (so the bfloat16 peak). One TPU v4/v5p device is one chip (megacore).
# Matched against `device.device_kind` in order (first substring match, case-insensitive).
PEAK_FLOPS = (
    ("h100 pcie", {"bfloat16": 756e12, "float32": 378e12}),
    ("h100", {"bfloat16": 989.4e12, "float32": 494.7e12}),  # SXM (device_kind "NVIDIA H100 80GB HBM3")
    ("h200", {"bfloat16": 989.4e12, "float32": 494.7e12}),  # same GH100 compute as the H100 SXM
    ("a100", {"bfloat16": 312e12, "float32": 156e12}),
    ("tpu v4", {"bfloat16": 275e12, "float32": 275e12}),
    ("tpu v5 lite", {"bfloat16": 197e12, "float32": 197e12}),  # v5e
    ("tpu v5e", {"bfloat16": 197e12, "float32": 197e12}),
    ("tpu v5p", {"bfloat16": 459e12, "float32": 459e12}),
    ("tpu v5", {"bfloat16": 459e12, "float32": 459e12}),  # v5p reports "TPU v5"
    ("tpu v6 lite", {"bfloat16": 918e12, "float32": 918e12}),  # v6e (Trillium)
    ("tpu v6e", {"bfloat16": 918e12, "float32": 918e12}),
)


def peak_flops(device_kind: str, dtype: str = "bfloat16") -> float | None:
    """Peak FLOP/s of one device of kind `device_kind` at `dtype` ("bfloat16" | "float32"); None if unknown."""
    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"dtype: expected 'bfloat16' or 'float32', got {dtype!r}")
    kind = device_kind.lower()
    for name, peaks in PEAK_FLOPS:
        if name in kind:
            return peaks[dtype]
    return None


def flops_from_cost_analysis(cost) -> float | None:
    """The 'flops' entry of a `cost_analysis()` result: a dict (current JAX), a list of dicts (one per program,
    older JAX; summed) or None (the backend has none). None when no entry holds a positive count."""
    if cost is None:
        return None
    entries = [cost] if isinstance(cost, dict) else list(cost)
    values = [float(e["flops"]) for e in entries if isinstance(e, dict) and e.get("flops") is not None]
    total = sum(v for v in values if v > 0)
    return total if total > 0 else None


def compiled_flops(jitted, *args, **kwargs) -> float | None:
    """FLOPs of one call of `jitted(*args)` on one device: XLA's cost analysis of the compiled (SPMD-partitioned)
    program. `jitted.lower(...).compile()` returns the executable a call with the same argument types and
    shardings uses (JAX caches it), so calling this on the step's first batch does not compile the step twice."""
    try:
        cost = jitted.lower(*args, **kwargs).compile().cost_analysis()
    except NotImplementedError:
        return None
    return flops_from_cost_analysis(cost)


def mfu(flops_per_step: float | None, steps: int, seconds: float, peak: float | None) -> float | None:
    """Achieved fraction of peak: flops_per_step * steps / seconds / peak (all per device); None if unknown."""
    if not flops_per_step or not peak or seconds <= 0:
        return None
    return flops_per_step * steps / seconds / peak


def device_peak(config) -> tuple[float | None, str]:
    """(peak FLOP/s per device for this run, where it came from): `config.train.peak_flops_per_device` when set
    (> 0), else the `PEAK_FLOPS` entry of the first device at `config.train.compute_dtype`, else None."""
    override = float(config.train.get("peak_flops_per_device", 0.0) or 0.0)
    if override > 0:
        return override, "config.train.peak_flops_per_device"
    kind = jax.devices()[0].device_kind
    peak = peak_flops(kind, config.train.compute_dtype)
    return peak, (f"PEAK_FLOPS[{kind!r}]" if peak else
                  f"no peak FLOP/s known for device {kind!r} (set config.train.peak_flops_per_device)")


class ProfileWindow:
    """`jax.profiler` trace of steps [start, start + num) into `<workdir>/profile` (TensorBoard's profile tab:
    `tensorboard --logdir <workdir>`), from `config.train.profile = (start, num)`; `()` = off. A run resumed
    inside the window traces its remaining steps."""

    def __init__(self, window, workdir: str):
        self.window = tuple(window or ())
        self.dir = os.path.join(workdir, "profile")
        self.active = False

    def before_step(self, step: int) -> None:
        if self.window and not self.active and self.window[0] <= step < self.window[0] + self.window[1]:
            jax.profiler.start_trace(self.dir)
            self.active = True

    def after_step(self, step: int, outputs) -> None:
        if self.active and step >= self.window[0] + self.window[1] - 1:
            self.stop(outputs)

    def stop(self, outputs=None) -> None:
        """End the trace (after the traced steps' device work finished)."""
        if self.active:
            if outputs is not None:
                jax.block_until_ready(outputs)
            jax.profiler.stop_trace()
            self.active = False
