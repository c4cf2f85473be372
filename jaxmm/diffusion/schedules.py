"""Noise schedules as diffusers defines them (DDPMScheduler / DDIMScheduler / DPMSolverMultistepScheduler).

A `Schedule` is a frozen, hashable dataclass (usable as a static jit argument) holding the fields of a diffusers
`scheduler_config.json`. The tables derived from it (betas, alphas_cumprod, inference timesteps, DPM sigmas) are
host-side numpy float32, computed in the same precision and order as diffusers (torch.linspace in float32, torch's
CPU cumprod accumulating in float64), so that they agree with diffusers bit for bit or within one float32 ulp.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import numpy as np

from jaxmm.checks import fail

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SPACINGS = ("leading", "trailing", "linspace")
VARIANCE_TYPES = ("fixed_small", "fixed_large")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The diffusion process and its inference-time discretisation. Defaults are DDIMScheduler's, except
    `clip_sample` (False, as Stable Diffusion configs set it). `clip_sample` is applied by DDPM and DDIM only
    (DPMSolverMultistepScheduler has no such option); `set_alpha_to_one` by DDIM only (DDPM always ends at 1);
    `lower_order_final`, `euler_at_final` and `final_sigmas_type` by DPM-Solver++ only."""
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    set_alpha_to_one: bool = True
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    variance_type: str = "fixed_small"
    lower_order_final: bool = True
    euler_at_final: bool = False
    final_sigmas_type: str = "zero"
    lambda_min_clipped: float = -math.inf

    def __post_init__(self):
        for name, allowed in (("beta_schedule", BETA_SCHEDULES), ("prediction_type", PREDICTION_TYPES),
                              ("timestep_spacing", SPACINGS), ("variance_type", VARIANCE_TYPES),
                              ("final_sigmas_type", ("zero", "sigma_min"))):
            if getattr(self, name) not in allowed:
                fail(f"Schedule.{name}", f"one of {allowed}", repr(getattr(self, name)))
        if not (isinstance(self.num_train_timesteps, int) and self.num_train_timesteps > 1):
            fail("Schedule.num_train_timesteps", "an int > 1", repr(self.num_train_timesteps))
        if self.trained_betas is not None:
            object.__setattr__(self, "trained_betas", tuple(float(b) for b in self.trained_betas))
            if len(self.trained_betas) != self.num_train_timesteps:
                fail("Schedule.trained_betas", f"{self.num_train_timesteps} values (num_train_timesteps)",
                     f"{len(self.trained_betas)}")


# config keys read into Schedule; keys accepted only at the value given here (anything else is unsupported);
# keys that do not change what these samplers compute
_FIELDS = {f.name for f in dataclasses.fields(Schedule)}
_ONLY = {"thresholding": False, "rescale_betas_zero_snr": False, "use_karras_sigmas": False,
         "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_lu_lambdas": False,
         "use_flow_sigmas": False, "use_dynamic_shifting": False, "algorithm_type": "dpmsolver++",
         "solver_order": 2, "solver_type": "midpoint", "timestep_type": "discrete", "interpolation_type": "linear"}
_IGNORED = {"_class_name", "_diffusers_version", "dynamic_thresholding_ratio", "sample_max_value", "skip_prk_steps",
            "flow_shift", "time_shift_type", "num_inference_steps"}


def from_config(config) -> Schedule:
    """A `Schedule` from a diffusers scheduler config: a dict, a `scheduler_config.json` path, or a folder holding
    one (`scheduler/` of a pipeline folder also works). Fields this module cannot honour raise a ValueError naming
    them; bookkeeping fields (`_class_name`, ...) are ignored."""
    if isinstance(config, (str, pathlib.Path)):
        path = pathlib.Path(config)
        for candidate in (path, path / "scheduler_config.json", path / "scheduler" / "scheduler_config.json"):
            if candidate.is_file():
                config = json.loads(candidate.read_text())
                break
        else:
            fail("config", "a scheduler_config.json file or a folder holding one", str(path))
    if not isinstance(config, dict):
        fail("config", "a dict, a path to scheduler_config.json or its folder", type(config).__name__)
    kwargs = {}
    for key, value in config.items():
        if key in _FIELDS:
            if key == "variance_type" and value is None:   # DPMSolverMultistepScheduler's default
                continue
            kwargs[key] = value
        elif key in _ONLY:
            if value != _ONLY[key] and value is not None:
                fail(f"scheduler config {key!r}", f"{_ONLY[key]!r} (the only value jaxmm.diffusion supports)",
                     repr(value))
        elif key not in _IGNORED:
            fail("scheduler config", f"only the known keys {sorted(_FIELDS | set(_ONLY) | _IGNORED)}",
                 f"the unsupported key {key!r}")
    return Schedule(**kwargs)


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace(start, end, steps, dtype=float32) on CPU, bit for bit: a float32 step, the first half
    `start + step * i` and the second half `end - step * (steps - 1 - i)`, each a fused multiply-add (one
    rounding, reproduced here by computing in float64 and rounding once)."""
    start, end = np.float32(start), np.float32(end)
    step = np.float64((end - start) / np.float32(steps - 1))
    i = np.arange(steps)
    lo = np.float64(start) + step * i
    hi = np.float64(end) - step * (steps - 1 - i)
    return np.where(i < steps // 2, lo, hi).astype(np.float32)


def betas(schedule: Schedule) -> np.ndarray:
    """beta_t for t = 0 .. num_train_timesteps-1, float32 as diffusers computes them."""
    n = schedule.num_train_timesteps
    if schedule.trained_betas is not None:
        return np.asarray(schedule.trained_betas, np.float32)
    if schedule.beta_schedule == "linear":
        return _torch_linspace_f32(schedule.beta_start, schedule.beta_end, n)
    if schedule.beta_schedule == "scaled_linear":
        return _torch_linspace_f32(schedule.beta_start ** 0.5, schedule.beta_end ** 0.5, n) ** 2
    # squaredcos_cap_v2: Nichol & Dhariwal's cosine alpha_bar, discretised and capped at 0.999 (float64 maths)
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], np.float32)


def alphas_cumprod(schedule: Schedule) -> np.ndarray:
    """prod_{s<=t} (1 - beta_s), float32 (accumulated in float64 like torch's CPU cumprod)."""
    alphas = np.float32(1.0) - betas(schedule)
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def timesteps(schedule: Schedule, num_steps: int, sampler: str = "ddim") -> np.ndarray:
    """The descending inference timesteps (int32) for `num_steps` steps. `sampler` is "ddpm", "ddim" or
    "dpmsolver++": DPMSolverMultistepScheduler spaces `num_steps + 1` points and drops the last."""
    n = schedule.num_train_timesteps
    if not (isinstance(num_steps, (int, np.integer)) and 0 < num_steps <= n):
        fail("num_steps", f"an int in [1, num_train_timesteps={n}]", repr(num_steps))
    if sampler not in ("ddpm", "ddim", "dpmsolver++"):
        fail("sampler", "one of 'ddpm', 'ddim', 'dpmsolver++'", repr(sampler))
    spacing = schedule.timestep_spacing
    if sampler != "dpmsolver++":
        if spacing == "linspace":
            ts = np.linspace(0, n - 1, num_steps).round()[::-1]
        elif spacing == "leading":
            ts = (np.arange(0, num_steps) * (n // num_steps)).round()[::-1] + schedule.steps_offset
        else:
            ts = np.round(np.arange(n, 0, -n / num_steps)) - 1
        return ts.astype(np.int32)
    ac = alphas_cumprod(schedule)
    alpha_t, sigma_t = np.sqrt(ac), np.sqrt(1 - ac)
    lambda_t = np.log(alpha_t) - np.log(sigma_t)
    last = n - int(np.searchsorted(lambda_t[::-1], np.float32(schedule.lambda_min_clipped)))
    if spacing == "linspace":
        ts = np.linspace(0, last - 1, num_steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ts = (np.arange(0, num_steps + 1) * (last // (num_steps + 1))).round()[::-1][:-1] + schedule.steps_offset
    else:
        ts = np.arange(last, 0, -n / num_steps).round() - 1
    return ts.astype(np.int32)


def dpm_sigmas(schedule: Schedule, ts: np.ndarray) -> np.ndarray:
    """DPM-Solver's sigma = sqrt((1 - alpha_bar) / alpha_bar) at `ts`, then the final sigma (0, or the smallest
    trained sigma for final_sigmas_type="sigma_min"): len(ts) + 1 float32 values."""
    ac = alphas_cumprod(schedule)
    sig = np.sqrt((np.float32(1) - ac) / ac)
    last = sig[0] if schedule.final_sigmas_type == "sigma_min" else 0.0
    return np.concatenate([np.interp(ts, np.arange(len(sig)), sig), [last]]).astype(np.float32)
