# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # DocSynthv2: documents generated autoregressively, layout and text together (arXiv 2406.08354)
#
# A document is one token sequence, `<sos> c₁ x₁ y₁ w₁ h₁ t₁ … cₙ xₙ yₙ wₙ hₙ tₙ <eos>`: each element's category,
# its box quantised to `bins` steps of the page, and its text (`<na>` for a missing attribute); elements in
# reading order. A decoder-only LLM models $p(\text{doc}) = \prod_i p(s_i \mid s_{<i})$; the paper's claim is
# that modelling the text as well as the layout improves alignment and coherence. Decoding is constrained: a mask,
# a pure function of the prefix, allows geometry tokens only where geometry goes, boxes only inside the page and
# words only in text slots (`jaxmm.data.docsynth.allowed_tokens`). The tokenisation details are
# **[reconstruction]** (docs/results/docsynth.md).
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
# ## Serialisation round trip and the constraint mask

# %%
from jaxmm.data import docsynth

vocab = docsynth.DocVocab()
page = docsynth.quantize_layout(docsynth.procedural_document(seed=3), vocab.bins)
ids = docsynth.serialize(page, vocab)
print(len(ids), "tokens:", " ".join(vocab.token_str(t) for t in ids[:20]), "...")
back = docsynth.parse(ids, vocab, aspect=page.aspect)
assert docsynth.serialize(back, vocab) == ids  # exact round trip on a quantised page
prefix = ids[:4]  # <sos> category x y -> the next slot is the width, which must keep the box on the page
allowed = docsynth.allowed_tokens(prefix, vocab)
print("after", [vocab.token_str(t) for t in prefix], "the mask allows",
      [vocab.token_str(t) for t in np.flatnonzero(allowed)][:8], "...", int(allowed.sum()), "tokens")
plt.figure(figsize=(3, 4)); plt.imshow(docsynth.render_layout(back)); plt.axis("off"); plt.title("a procedural page")
plt.show()

# %% [markdown]
# ## A tiny training run, constrained samples and the layout metrics
#
# `docsynth:tiny` trains the jaxmm LLM on procedural pages for a few steps and samples with and without the
# constraint mask (`SIZE = "full"` runs `docsynth:layout_text`; `docsynth:layout_only` is the ablation).

# %%
config = load_config("docsynth:tiny" if SIZE == "tiny" else "docsynth:layout_text")
workdir = os.path.join(os.environ.get("JAXMM_NOTEBOOK_TMP") or tempfile.mkdtemp(prefix="jaxmm_"), "docsynth")
summary = run(config, workdir)
print({k: summary[k] for k in ("perplexity", "valid_constrained", "valid_unconstrained", "gen_alignment_x100",
                                "gen_overlap_x100", "gen_coherence") if k in summary})
display(Image(filename=os.path.join(workdir, "samples.png"), width=600))

# %% [markdown]
# ## For a real run
#
# `python -m train --config docsynth:layout_text` and `docsynth:layout_only` (3 seeds each: `--config.seed`) give the
# table in docs/results/docsynth.md. Real layouts: `jaxmm.data.docsynth.load_coco_layouts` reads PubLayNet's
# COCO-format annotations, `load_crello_json` Crello-style designs.
