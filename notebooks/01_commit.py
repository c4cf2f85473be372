# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # CoMMIT: balanced instruction tuning of a multimodal LLM (arXiv 2407.20454)
#
# An MLLM is an encoder S (vision or audio, with its projector) and an LLM T tuned together; the paper finds they
# learn unbalanced and the lagging one's gradients fade. CoMMIT measures the balance and acts on it:
#
# - **κ, the learning-balance coefficient** — how much each side's proposed update moves the answer distribution
#   on a probe batch (the optimizer's step Δ = Δ_S + Δ_T, taken one side at a time):
#   $D_S = \mathrm{KL}(p(\cdot\mid x;\theta_S+\Delta_S,\theta_T)\,\|\,p(\cdot\mid x;\theta))$,
#   $D_T = \mathrm{KL}(p(\cdot\mid x;\theta_S,\theta_T+\Delta_T)\,\|\,p(\cdot\mid x;\theta))$,
#   $\kappa = D_S/(D_S+D_T)$ — `jaxmm.tuning.commit.balance_coefficient`.
# - **the dynamic scheduler** — every $L_{lr}$ steps, from the window mean $\bar\kappa$:
#   $\eta_S = \eta_0\,2(1-\bar\kappa)$, $\eta_T = \eta_0\,2\bar\kappa$, clipped — `scheduled_learning_rates`.
# - **the auxiliary loss** — label-free, weighted by the lagging side's share ($1-2\bar\kappa$ when the encoder
#   lags): a KL that rewards the lagging side for moving the output distribution — `aux_loss`.
#
# The paper publishes no formula for the scheduler or the loss: jaxmm's are marked **[reconstruction]**
# (docs/results/commit.md).
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
from IPython.display import Image, Markdown, display

from train.main import load_config, run

SIZE = "tiny"  # "full" on a GPU/TPU runtime: the configuration the docs/results numbers come from

# %% [markdown]
# ## κ on a toy model
#
# A two-part model: an "encoder" matrix and an "LLM" matrix. Scaling the encoder's share of the update up drives
# κ towards 1, scaling it down drives κ towards 0 — what the scheduler reads.

# %%
from jaxmm.tuning import commit

key = jax.random.key(0)
params = {"encoder": jax.random.normal(key, (8, 8)) * 0.3, "llm": jax.random.normal(jax.random.key(1), (8, 16))}
x = jax.random.normal(jax.random.key(2), (32, 8))
logits_fn = lambda p, batch: ((jnp.tanh(batch @ p["encoder"]) @ p["llm"])[:, None, :], jnp.ones((32, 1)))
side = commit.path_mask(params, lambda path: path[0] == "encoder")
update = jax.tree.map(lambda p: 0.01 * jax.random.normal(jax.random.key(3), p.shape), params)
for scale in (0.1, 1.0, 10.0):
    u = {"encoder": update["encoder"] * scale, "llm": update["llm"]}
    out = commit.balance_coefficient(logits_fn, params, u, x, side)
    print(f"encoder step x{scale:>4}: D_S={float(out['d_s']):.2e} D_T={float(out['d_t']):.2e} kappa={float(out['kappa']):.3f}")
lr_s, lr_t = commit.scheduled_learning_rates(0.2, 1e-3, 1e-3)
print(f"kappa_bar=0.2 (encoder lags) -> encoder lr {float(lr_s):.1e}, LLM lr {float(lr_t):.1e}")

# %% [markdown]
# ## A tiny CoMMIT run through the trainer
#
# `commit:vision_tiny` is the vision MLLM of docs/results/commit.md (ViT + projector + Llama on text-in-image
# questions) cut to a few steps; `SIZE = "full"` runs `commit:vision`. Same code path as
# `python -m train --config commit:vision_tiny --workdir DIR`.

# %%
config = load_config("commit:vision_tiny" if SIZE == "tiny" else "commit:vision",
                     **{"train.plots": False, "train.progress": True})
workdir = os.environ.get("JAXMM_NOTEBOOK_TMP") or tempfile.mkdtemp(prefix="jaxmm_commit_")
summary = run(config, os.path.join(workdir, "commit"))
print({k: summary[k] for k in ("eval_accuracy", "kappa_mean", "kappa_measurements") if k in summary})

# %% [markdown]
# ## The key figure: κ and the two learning rates over training
#
# docs/results/commit.md's demo figure, redrawn from this run's metrics.jsonl: κ per measurement, the window mean
# κ̄ the scheduler acts on, and the per-side learning rates it set.

# %%
rows = [json.loads(line) for line in open(os.path.join(workdir, "commit", "metrics.jsonl"))]
kap = [(r["step"], r["kappa"]) for r in rows if "kappa" in r]
lrs = [(r["step"], r["lr/encoder"], r["lr/llm"]) for r in rows if "lr/encoder" in r]
fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
a.plot(*zip(*kap), "o-", label="κ"); a.axhline(0.5, color="gray", ls=":", label="balanced")
a.set_xlabel("step"); a.set_ylim(-0.05, 1.05); a.legend(); a.set_title("learning balance κ")
steps, lr_s, lr_t = zip(*lrs)
b.plot(steps, lr_s, label="encoder"); b.plot(steps, lr_t, label="LLM"); b.set_yscale("log")
b.set_xlabel("step"); b.legend(); b.set_title("learning rates set from κ̄")
plt.tight_layout(); plt.show()

# %% [markdown]
# ## For a real run
#
# - On a GPU/TPU runtime set `SIZE = "full"` (`commit:vision`, or `commit:audio` for the audio MLLM); the sweeps
#   behind docs/results/commit.md are `commit:sweep_convergence` and `commit:sweep_imbalance`.
# - Start from pretrained weights with `model.init.encoder=<CLIP/SigLIP folder>` and `model.init.llm=<Llama folder>`
#   (configs/llava.py shows the LLaVA recipe); `--config.task_args.method=constant` is the Constant-LR baseline.
