"""Wall-clock timing of JAX calls: the one timing helper of the experiments and the benchmarks.

    from jaxmm.timing import time_call, time_calls
    t = time_call(jax.jit(f), x, reps=10)          # Timing: t.median, t.min, t.first (compile), t.spread, t.value
    ts = time_calls({"a": (fa, (x,)), "b": (fb, (x,))}, reps=5)   # round-robin: {"a": Timing, "b": Timing}

Every call is followed by `jax.block_until_ready` on its result (JAX dispatches asynchronously; without it a
timing measures the dispatch, not the work). The first `warmup` calls are not counted (the first one compiles;
its time is reported as `first`). `time_calls` times the cases round-robin — each round calls every case once —
so a load change on a shared machine hits all cases alike and their ratios stay meaningful.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import jax

from jaxmm.checks import fail


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds of the timed calls (`times`), of the first (compiling) call, and the last call's result."""
    times: tuple
    first: float
    value: Any = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def spread(self) -> float:
        """(slowest − fastest) / median: tells a difference between two timings from noise."""
        return (max(self.times) - min(self.times)) / self.median


def time_calls(cases: dict[str, tuple[Callable, tuple]], *, reps: int = 5, warmup: int = 1) -> dict[str, Timing]:
    """{name: Timing} of `fn(*args)` for each case {name: (fn, args)}: `warmup` untimed calls per case (the first
    one's time is `first`), then `reps` rounds, each timing every case once."""
    if reps < 1 or warmup < 1:
        fail("reps, warmup", "integers >= 1", f"{reps}, {warmup}")
    first, values, times = {}, {}, {name: [] for name in cases}
    for name, (fn, args) in cases.items():
        t0 = time.perf_counter()
        values[name] = jax.block_until_ready(fn(*args))
        first[name] = time.perf_counter() - t0
        for _ in range(warmup - 1):
            values[name] = jax.block_until_ready(fn(*args))
    for _ in range(reps):
        for name, (fn, args) in cases.items():
            t0 = time.perf_counter()
            values[name] = jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t0)
    return {name: Timing(tuple(times[name]), first[name], values[name]) for name in cases}


def time_call(fn: Callable, *args, reps: int = 5, warmup: int = 1) -> Timing:
    """Timing of `fn(*args)`: `warmup` untimed calls (the first compiles), then `reps` timed ones."""
    return time_calls({"call": (fn, args)}, reps=reps, warmup=warmup)["call"]
