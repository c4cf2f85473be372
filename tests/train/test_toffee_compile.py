"""Toffee's jitted functions compile once per shape (train/tasks/toffee.py imports JAX's Pallas TPU flash attention
before any trace).

Without that import, jaxmm.attention.dispatch imports the module inside the first trace of a self-attention whose
lengths fit the TPU kernel (multiples of 128); the import adds a value to JAX's tracing context, so that first
jitted function misses its cache and compiles again on its second call (the UNet train step, its init and its
sampler in the toffee run: 16-150 CPU s each). Each case runs in a fresh interpreter: the import is process-wide."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import jax, jax.numpy as jnp
{prelude}
from jaxmm.attention import dispatch
f = jax.jit(lambda q: dispatch.dot_product_attention(q, q, q))
q = jnp.ones((1, 128, 1, 8), jnp.float32)
f(q).block_until_ready(); f(q * 2).block_until_ready()
print(f._cache_size())
"""


def _compilations(prelude: str) -> int:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run([sys.executable, "-c", PROBE.format(prelude=prelude)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def counts():
    return {"bare": _compilations(""), "toffee": _compilations("import train.tasks.toffee")}


def test_second_call_hits_the_cache_after_importing_the_task(counts):
    assert counts["toffee"] == 1


def test_without_the_import_the_second_call_recompiles(counts):
    """The control: the recompilation the import prevents is real (if a JAX release stops adding the context value
    on import, this fails and the import in train/tasks/toffee.py can go)."""
    assert counts["bare"] == 2
