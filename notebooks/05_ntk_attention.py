# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # NTK-Attention: infinite-long prefix learning (arXiv 2406.14036)
#
# Prefix tuning prepends m trainable tokens to every attention layer, at cost O(mL + L²). NTK-Attention replaces
# the prefix by two small per-head parameters, Z ∈ R^{d×d} and k ∈ R^d, standing in for an arbitrarily long prefix:
#
# $$\mathrm{NTKAttn}(Q,K,V) = \frac{\exp(S)\,V + \varphi(Q)\,Z}{\exp(S)\,\mathbf 1 + \varphi(Q)\,|k|},\qquad
#   S = QK^\top/\sqrt d,\quad \varphi(x) = \mathrm{ELU}(x/d^{1/4}) + 1.$$
#
# jaxmm computes it as one extra, query-dependent virtual key inside an online-softmax (flash) loop, so the L×L
# matrix is never formed: `jaxmm.ops.ntk.ntk_attention` (XLA), a Pallas kernel on GPU, and
# `jaxmm.attention.ntk_attention` choosing between them; in a model it is the attention kind `"ntk"`.
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
# ## The op against the formula in float64 NumPy

# %%
from jaxmm.ops import ntk

B, L, H, d = 2, 16, 2, 8
ks = jax.random.split(jax.random.key(0), 5)
q, k, v = (jax.random.normal(ks[i], (B, L, H, d)) for i in range(3))
z = jax.random.normal(ks[3], (H, d, d)) * 0.1
kvec = jax.random.normal(ks[4], (H, d))
out = ntk.ntk_attention(q, k, v, z, kvec, is_causal=True, block_k=4)

q64, k64, v64, z64, kv64 = (np.asarray(a, np.float64) for a in (q, k, v, z, kvec))
S = np.einsum("blhd,bmhd->bhlm", q64, k64) / np.sqrt(d)
S = np.where(np.tril(np.ones((L, L), bool)), S, -np.inf)
phi = lambda x: np.where(x / d ** 0.25 > 0, x / d ** 0.25, np.expm1(x / d ** 0.25)) + 1
num = np.einsum("bhlm,bmhd->blhd", np.exp(S), v64) + np.einsum("blhd,hde->blhe", phi(q64), z64)
den = np.exp(S).sum(-1).transpose(0, 2, 1) + np.einsum("blhd,hd->blh", phi(q64), np.abs(kv64))
print("max |jaxmm - float64 formula| =", np.abs(np.asarray(out) - num / den[..., None]).max())

# %% [markdown]
# ## Sec. 4.4 at tiny size: NTK-Attention fitted to prefix attention, error against the prefix length m
#
# The paper trains (Z, k) to match prefix attention with m prefix tokens and shows the error falling as m grows.
# `ntk_attention:tiny` is that experiment at toy size (`SIZE = "full"` runs `ntk_attention:sec44`, m up to 2¹⁸).

# %%
config = load_config("ntk_attention:tiny" if SIZE == "tiny" else "ntk_attention:sec44")
workdir = os.path.join(os.environ.get("JAXMM_NOTEBOOK_TMP") or tempfile.mkdtemp(prefix="jaxmm_"), "ntk_sec44")
summary = run(config, workdir)
show_results(workdir)

# %% [markdown]
# ## For a real run
#
# - `python -m train --config ntk_attention:sec44` is the full curve; `peft:table` compares full fine-tuning, LoRA,
#   P-Tuning v2 and NTK-Attention on a small ViT and LLM (docs/results/peft.md).
# - In your own model: `jaxmm.nn.BlockConfig(attention="ntk", ...)` in a `jaxmm.nn.Block`, or call `jaxmm.attention.ntk_attention` (cuDNN/Pallas
#   on GPU, XLA elsewhere).
