# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Differential privacy in NTK regression (arXiv 2407.13621)
#
# NTK ridge regression of a two-layer network with quadratic activation, on L2-normalised inputs and m random
# first-layer weights $w_r$: $H_{ij} = \langle x_i,x_j\rangle\,\frac1m\sum_r\langle w_r,x_i\rangle\langle w_r,x_j\rangle$,
# $\alpha = (H+\lambda I)^{-1}Y$. The private release is **Gaussian sampling**: draw $g_1..g_k \sim N(0, H)$ and
# release $\tilde H = \frac1k\sum_t g_t g_t^\top$; fewer samples, more privacy.
#
# jaxmm's default (`assumptions="bounded"`) makes the guarantee hold on any dataset (rows of norm ≤ 1, a ridge
# η that bounds λ_min, a proved sensitivity, k from an exact Rényi bound); `assumptions="paper"` keeps the paper's
# (η, β) and *measures* whether they held on the data — on our data they do not (docs/results/dp_ntk.md).
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
# ## The NTK matrix against float64 NumPy, and a private fit
#
# The kernel is formed without the m×n×n tensor: $H = ((XW^\top)(XW^\top)^\top/m) \circ (XX^\top)$.

# %%
from sklearn.datasets import load_digits
from jaxmm.privacy import dp_ntk

digits = load_digits()
mask = digits.target < 2
X = digits.data[mask] / np.linalg.norm(digits.data[mask], axis=1, keepdims=True)
y = digits.target[mask]
W = np.random.default_rng(0).normal(size=(256, X.shape[1]))
H64 = ((X @ W.T) @ (X @ W.T).T / 256) * (X @ X.T)          # float64 reference
print("H is", H64.shape, "min eigenvalue", np.linalg.eigvalsh(H64).min())
idx = np.random.default_rng(1).permutation(len(y))
tr, te = idx[:250], idx[250:]
for eps in (None, 10.0, 100.0):
    pred, report = dp_ntk.fit_predict(jax.random.key(0), X[tr], y[tr], X[te], num_classes=2, epsilon=eps, W=W)
    acc = "k = 0: nothing released" if pred is None else f"test accuracy {np.mean(np.asarray(pred) == y[te]):.3f}"
    print(f"epsilon={eps}: {acc}; k={report.get('k')}")
base = dp_ntk.nothing_released(X[tr], y[tr], X[te], num_classes=2, W=W)
print(f"nothing private released (H~ = 0, alpha = Y/lambda): test accuracy {np.mean(base == y[te]):.3f} -- the "
      "honest baseline every private row must beat")

# %% [markdown]
# ## The accuracy-vs-ε sweep at tiny size
#
# `dp_ntk:tiny` is the sweep of docs/results/dp_ntk.md at toy size: accuracy against ε for each mechanism, beside
# the non-private line and the "nothing private released" row. `SIZE = "full"` runs `dp_ntk:digits10`.

# %%
config = load_config("dp_ntk:tiny" if SIZE == "tiny" else "dp_ntk:digits10")
workdir = os.path.join(os.environ.get("JAXMM_NOTEBOOK_TMP") or tempfile.mkdtemp(prefix="jaxmm_"), "dp_ntk")
summary = run(config, workdir)
show_results(workdir)

# %% [markdown]
# ## For a real run
#
# `dp_ntk:digits2` / `dp_ntk:digits10` are the tables in docs/results/dp_ntk.md; `dp_ntk:cifar10` / `:cifar2`
# read CIFAR-10 through TFDS where it is prepared (`tfds build cifar10`), and `dp_ntk:npy` reads your own features
# (`task_args.npy_path`). What is *not* private (labels, raw features at query time) is printed under each table.
