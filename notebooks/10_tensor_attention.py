# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Tensor attention in almost linear time (arXiv 2405.16411)
#
# Tensor (2-simplicial) attention lets each query attend to *pairs* of keys:
#
# $$S_{ijk} = s\sum_l Q_{il}K^1_{jl}K^2_{kl},\qquad P_{ijk} = \frac{e^{S_{ijk}}}{\sum_{j'k'} e^{S_{ij'k'}}},\qquad
#   O_i = \sum_{jk} P_{ijk}\,(V^1_j\circ V^2_k),$$
#
# Θ(n³d) done naively. jaxmm has the exact version with flash-style tiles and the paper's closed-form gradient
# (`method="exact"`, a Pallas kernel on GPU), and the paper's fast algorithm: a degree-g Taylor feature map and the
# Khatri–Rao identity give O(n·r·d) with r = C(d+g, g) (`method="poly"`) — accurate only while entries stay small
# (the paper's hardness result: the error explodes past a threshold in the entry bound B).
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
# ## Exact and polynomial tensor attention against the float64 formula

# %%
from jaxmm.ops import tensor

B, n, H, d = 1, 12, 1, 4
ks = jax.random.split(jax.random.key(0), 5)
args = [jax.random.uniform(ks[i], (B, n, H, d), minval=-1, maxval=1) for i in range(5)]
q64, k1, k2, v1, v2 = (np.asarray(a, np.float64)[0, :, 0] for a in args)
S = np.einsum("il,jl,kl->ijk", q64, k1, k2) / d
P = np.exp(S - S.max(axis=(1, 2), keepdims=True)); P /= P.sum(axis=(1, 2), keepdims=True)
ref = np.einsum("ijk,jl,kl->il", P, v1, v2)
for method, degree in (("exact", None), ("poly", 2), ("poly", 4)):
    out = tensor.tensor_attention(*args, method=method, degree=degree, block_q=4, block_k=4)
    print(f"{method:5s} degree={degree}: max |jaxmm - float64| = {np.abs(np.asarray(out)[0, :, 0] - ref).max():.2e}")

# %% [markdown]
# ## The polynomial method's error against the degree and the entry bound, at tiny size
#
# `tensor_attention:tiny` runs docs/results/tensor_attention.md's error table at toy size (`SIZE = "full"`:
# `tensor_attention:poly_error`; `:scaling` times n³ against n·r, `:match3` trains on the Match3 task).

# %%
config = load_config("tensor_attention:tiny" if SIZE == "tiny" else "tensor_attention:poly_error")
workdir = os.path.join(os.environ.get("JAXMM_NOTEBOOK_TMP") or tempfile.mkdtemp(prefix="jaxmm_"), "ta")
summary = run(config, workdir)
show_results(workdir)

# %% [markdown]
# ## For a real run
#
# On a GPU runtime `jaxmm.attention.tensor_attention` uses jaxmm's Pallas kernel for the exact method;
# `python -m train --config tensor_attention:scaling` measures the n³ vs n·r scaling there, and
# `tensor_attention:match3` compares standard, exact-tensor and polynomial attention on Match3.
