# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Quickstart: a jaxmm layer in your model, a Hugging Face folder, `generate()`, a training run
#
# jaxmm is a JAX/Flax library: pure functions for the maths (`jaxmm.ops`), attention with the backend picked per
# platform (`jaxmm.attention`: cuDNN on NVIDIA GPUs, Pallas on TPU, XLA elsewhere), thin Linen layers (`jaxmm.nn`),
# models (`jaxmm.models`), Hugging Face weights in and out (`jaxmm.hf`) and one trainer driven by configs
# (`python -m train --config <name>[:variant] --workdir DIR`). This notebook touches each once.
#
# **Install.** On Colab the next cell clones the repository and installs it with the runtime's accelerator extra:
# `[cuda]` (JAX's CUDA 13 wheels) or `[cuda12]` (a driver whose `nvidia-smi` reports CUDA 12.x, as Colab's GPUs do
# today) on a GPU runtime, `[tpu]` on a TPU runtime, nothing on a CPU runtime. Elsewhere it does nothing: run the
# notebook from a clone where `make venv` (or `pip install -e '.[test]'`) has been run.

# %%
import os
import pathlib
import subprocess
import sys

REPOSITORY = "jaxmm/jaxmm"  # GitHub owner/name (notebooks/build.py fills the badges from the same place)
if "google.colab" in sys.modules:
    accel = os.environ.get("COLAB_GPU") and "cuda12" or ("tpu" if os.environ.get("TPU_NAME") else "")
    subprocess.check_call(["git", "clone", "--depth", "1", f"https://github.com/{REPOSITORY}", "jaxmm"])
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "-e",
                           f"jaxmm[{accel}]" if accel else "jaxmm"])
    os.chdir("jaxmm")
ROOT = pathlib.Path.cwd().parent if pathlib.Path.cwd().name == "notebooks" else pathlib.Path.cwd()
sys.path.insert(0, str(ROOT))  # `train` and `configs` live at the repository root

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import matplotlib.pyplot as plt

import jaxmm
print("JAX", jax.__version__, "on", jax.default_backend(), jax.devices())

# %% [markdown]
# ## 1. A jaxmm layer inside your own Flax model
#
# `jaxmm.attention.dot_product_attention(q, k, v)` takes `[batch, length, heads, head_dim]` like
# `jax.nn.dot_product_attention` and picks cuDNN / Pallas / XLA from the platform it is lowered for;
# `jaxmm.nn.Dense` is a Dense layer with optional LoRA (`lora_rank=8` adds trainable low-rank factors, B = 0 so
# the layer starts as the base layer).

# %%
class MyBlock(nn.Module):
    heads: int = 4
    head_dim: int = 16
    lora_rank: int = 0

    @nn.compact
    def __call__(self, x):
        b, n, _ = x.shape
        proj = lambda name: jaxmm.nn.Dense(self.heads * self.head_dim, lora_rank=self.lora_rank, name=name)(x)
        q, k, v = (proj(name).reshape(b, n, self.heads, self.head_dim) for name in "qkv")
        y = jaxmm.attention.dot_product_attention(q, k, v, is_causal=True)
        return x + jaxmm.nn.Dense(x.shape[-1], name="out")(y.reshape(b, n, -1))


x = jax.random.normal(jax.random.key(0), (2, 10, 32))
block = MyBlock(lora_rank=4)
params = nn.unbox(block.init(jax.random.key(1), x)["params"])  # jaxmm layers name logical axes for sharding
y = block.apply({"params": params}, x)

# the same block with jax.nn's attention: equal up to float32 rounding
q, k, v = (jnp.einsum("bnd,de->bne", x, params[n]["kernel"]).reshape(2, 10, 4, 16) for n in "qkv")
ref = x + jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(2, 10, -1) @ params["out"]["kernel"]
print("output", y.shape, "max |jaxmm - jax.nn| =", float(jnp.abs(y - ref).max()))
assert jnp.allclose(y, ref, atol=1e-5)

# %% [markdown]
# ## 2. Weights from a Hugging Face folder, and `generate()`
#
# `jaxmm.hf.from_pretrained(folder)` reads `config.json` + safetensors (pickles are refused) for Llama / Mistral /
# Qwen2, CLIP, SigLIP, Whisper's encoder, LLaVA and diffusers' UNet / VAE, and returns `(module, params)`. Here a
# tiny random Llama from the repository's test fixtures; on a real runtime point it at any downloaded folder
# (e.g. `huggingface_hub.snapshot_download("HuggingFaceTB/SmolLM2-135M")`).

# %%
from jaxmm.models.llm import generate

folder = ROOT / "tests" / "fixtures" / "hf" / "llama_mha"
model, llm_params = jaxmm.hf.from_pretrained(folder)
tokenizer = jaxmm.hf.load_tokenizer(folder)
reference = np.load(folder / "reference.npz")          # what transformers computed for the same folder
logits = model.apply({"params": llm_params}, jnp.asarray(reference["input_ids"]))
print("logits", logits.shape, "max |jaxmm - transformers| =", float(np.abs(logits - reference["logits"]).max()))

prompt = jnp.asarray(reference["gen_prompt_ids"])
eos = int(reference["gen_eos_token_id"])  # the fixture generated without an EOS stop (-1)
new = generate(model, llm_params, prompt, jnp.asarray(reference["gen_attention_mask"]), max_new_tokens=20,
               eos_id=eos if eos >= 0 else None, pad_id=int(reference["gen_pad_token_id"]))
print("greedy ids equal transformers' generate:", bool((np.asarray(new) == reference["gen_new_ids"]).all()))
print("decoded:", [tokenizer.decode(list(map(int, row))) for row in np.asarray(new)])

# %% [markdown]
# ## 3. A training run through the trainer, with a progress bar and plots
#
# `train.main.load_config(name, **overrides)` gives the same config as `python -m train --config <name>`;
# `train.main.run(config, workdir)` runs it (re-running a workdir resumes). `vit_probe:tiny` trains a small ViT to
# read the word in a procedural image, cut to a few steps; `SIZE = "full"` runs `vit_probe:word` (1000 steps, a few minutes
# on a laptop CPU, seconds on a GPU). The main job of the repository is `demo` (`make demo`).

# %%
import json
import tempfile

from train.main import load_config, run

SIZE = "tiny"  # "full" on a GPU/TPU runtime
config = load_config("vit_probe:tiny" if SIZE == "tiny" else "vit_probe:word", **{"train.plots": False})
workdir = tempfile.mkdtemp(prefix="jaxmm_quickstart_")
summary = run(config, workdir)
print({k: v for k, v in summary.items() if not isinstance(v, dict)})

# %%
rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
train_rows = [r for r in rows if "loss" in r]
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], marker="o")
ax.set_xlabel("step"); ax.set_ylabel("training loss"); ax.set_title(f"vit_probe ({SIZE})")
plt.show()

# %% [markdown]
# ## Next
#
# - One notebook per paper sits beside this one (notebooks/README.md).
# - The command line: `python -m train --config vit_probe:word --workdir runs/probe` is this run; every config and what it
#   measured is listed in the README's papers table and docs/RESULTS.md.
