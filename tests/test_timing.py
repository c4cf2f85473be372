"""jaxmm.timing: every call is synchronised (the time covers the work, not the dispatch), warm-up calls are not
counted, and round-robin timing interleaves the cases."""
import time

import jax.numpy as jnp
import pytest

from jaxmm.timing import Timing, time_call, time_calls


class _Lazy:
    """A fake asynchronous result: the work (a sleep) happens only when it is waited for."""

    def __init__(self, seconds, log):
        self.seconds, self.log = seconds, log

    def block_until_ready(self):
        time.sleep(self.seconds)
        self.log.append("waited")
        return self


def test_time_call_waits_for_the_result_and_skips_warmup():
    log, calls = [], []
    t = time_call(lambda s: calls.append(s) or _Lazy(s, log), 0.02, reps=3, warmup=2)
    assert len(calls) == 5 and log.count("waited") == 5       # 2 warm-up + 3 timed calls, each waited for
    assert len(t.times) == 3 and all(x >= 0.02 for x in t.times) and t.first >= 0.02
    assert t.min <= t.median and t.spread >= 0 and isinstance(t.value, _Lazy)


def test_time_calls_is_round_robin():
    order = []

    def case(name, seconds):
        return lambda: order.append(name) or _Lazy(seconds, [])

    ts = time_calls({"a": (case("a", 0.0), ()), "b": (case("b", 0.01), ())}, reps=2)
    assert order == ["a", "b", "a", "b", "a", "b"]           # warm-up a, b, then rounds (a, b), (a, b)
    assert ts["b"].min >= 0.01
    assert ts["a"].median < ts["b"].median


def test_real_jax_call_and_bad_arguments():
    t = time_call(lambda x: x @ x, jnp.ones((64, 64)), reps=2)
    assert isinstance(t, Timing) and float(t.value[0, 0]) == 64.0
    with pytest.raises(ValueError, match="reps"):
        time_call(lambda: 0, reps=0)
