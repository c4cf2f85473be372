# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Differentially private cross-attention (arXiv 2407.14717)
#
# Private keys and values K, V ∈ R^{n×d} (a system prompt, retrieved documents), public and possibly adaptive
# queries q: $\mathrm{Attn}(q) = \sum_i e^{\langle q,k_i\rangle/d} v_i \,/\, \sum_i e^{\langle q,k_i\rangle/d}$.
# The method replaces $e^{\langle q,k\rangle/d}$ by a polynomial kernel $\langle U(q),U(k)\rangle$ (degree-s Taylor
# features, r = C(d+s, s)), so numerator and denominator become linear in $\sum_i U(k_i)\,[v_i, 1]$: those sums
# are released once with (ε, δ)-DP noise (truncated Laplace in a segment tree, **DPTree**, or one release), and any
# number of adaptive queries afterwards is post-processing. jaxmm privatises the numerator **and** the
# denominator; entries are clipped to ±R (keys) and ±R_w (values) so the sensitivity holds on any data.
# Tree layout and bin count are **[reconstruction]** (docs/results/dp_cross_attention.md).
# %% [markdown]
# **Setup.** On Colab the next cell clones jaxmm and installs it with the runtime's accelerator extra (`[cuda12]` on
# a GPU runtime, `[tpu]` on a TPU runtime; see 00_quickstart); elsewhere run it from a clone with jaxmm installed.

# %%
import json
import os
import pathlib
import subprocess
import sys
import tempfile

REPOSITORY = "jaxmm/jaxmm"
if "google.colab" in sys.modules:
    accel = os.environ.get("COLAB_GPU") and "cuda12" or ("tpu" if os.environ.get("TPU_NAME") else "")
    subprocess.check_call(["git", "clone", "--depth", "1", f"https://github.com/{REPOSITORY}", "jaxmm"])
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "-e",
                           f"jaxmm[{accel}]" if accel else "jaxmm"])
    os.chdir("jaxmm")
ROOT = pathlib.Path.cwd().parent if pathlib.Path.cwd().name == "notebooks" else pathlib.Path.cwd()
sys.path.insert(0, str(ROOT))

import jax
import jax.numpy as jnp
import numpy as np
import matplotlib.pyplot as plt

from train.main import load_config, run
from train.report import show_results

SIZE = "tiny"  # "full" on a GPU/TPU runtime: the configuration the docs/results numbers come from

# %% [markdown]
# ## The release against exact attention
#
# ε = ∞ turns the noise off: what is left is the polynomial approximation's error; finite ε adds the privacy noise,
# which shrinks as n grows (the noise is fixed, the sums grow with n).

# %%
from jaxmm.privacy import cross_attention as dpx

d, dv = 4, 3
for n in (256, 4096):
    kk, kv, kq, kn = jax.random.split(jax.random.key(n), 4)
    K = jax.random.uniform(kk, (n, d), minval=-1, maxval=1)
    V = jax.random.uniform(kv, (n, dv), minval=-1, maxval=1)
    Q = jax.random.uniform(kq, (64, d), minval=-1, maxval=1)
    exact = np.asarray(dpx.exact_cross_attention(np.float64(Q), np.float64(K), np.float64(V)))
    for eps in (np.inf, 1.0):
        state = dpx.dp_cross_attention_init(kn, K, V, epsilon=eps, delta=1e-5, bound_qk=1.0, bound_v=1.0,
                                            degree=3, method="release")
        err = np.abs(np.asarray(dpx.dp_cross_attention(state, Q)) - exact).max()
        print(f"n={n:5d} eps={eps:>4}: max |DP attention - exact| = {err:.4f}")

# %% [markdown]
# ## The experiment at tiny size
#
# `dp_cross_attention:tiny` runs the error-vs-n, error-vs-ε, error-vs-degree, query-time and privacy-audit
# experiments of docs/results/dp_cross_attention.md at toy size (`SIZE = "full"` runs the default config).

# %%
config = load_config("dp_cross_attention:tiny" if SIZE == "tiny" else "dp_cross_attention")
workdir = os.path.join(os.environ.get("JAXMM_NOTEBOOK_TMP") or tempfile.mkdtemp(prefix="jaxmm_"), "dp_xattn")
summary = run(config, workdir)
show_results(workdir)

# %% [markdown]
# ## For a real run
#
# `SIZE = "full"` (or `python -m train --config dp_cross_attention --workdir runs/dp_xattn`) reproduces the
# published-theorem checks at full size; `task_args` in configs/dp_cross_attention.py set n, d, the degree, ε and δ.
# The private model experiment (a small model reading a private context) is the task
# `dp_cross_attention.private_context`.
