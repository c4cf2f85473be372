"""A jitted function with a self-attention that fits JAX's Pallas TPU flash attention compiles once per shape.

jaxmm.attention.dispatch traces every platform branch, including the TPU kernel's. Importing that kernel's module
adds a value to JAX's tracing context; imported lazily inside the first such trace (as dispatch did until
2026-11-30), the first jitted function misses its cache and compiles a second time on its second call (the Toffee
run's UNet step, init and sampler: 16-150 CPU s each). dispatch now imports it at module import. Each case runs in a
fresh interpreter: the import is process-wide."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import jax, jax.numpy as jnp
{top}
def attend(q):
    from jaxmm.attention import dispatch
    return dispatch.dot_product_attention(q, q, q)
f = jax.jit(attend)
q = jnp.ones((1, 128, 1, 8), jnp.float32)
f(q).block_until_ready(); f(q * 2).block_until_ready()
print(f._cache_size())
"""


def _compilations(top: str) -> int:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run([sys.executable, "-c", PROBE.format(top=top)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def counts():
    # "lazy", the control: dispatch (and with it the TPU kernel module) first imported inside the trace, as the
    # kernel module was before
    return {"dispatch": _compilations("from jaxmm.attention import dispatch"), "lazy": _compilations("")}


def test_second_call_hits_the_cache(counts):
    assert counts["dispatch"] == 1


def test_a_module_imported_inside_the_first_trace_makes_it_recompile(counts):
    """The control: the hazard the module-level import avoids is real in this JAX release (if a release stops
    adding the context value on import, this fails and dispatch's import may move back inside the function)."""
    assert counts["lazy"] == 2
