# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # ARTIST: disentangled textual + visual diffusion for text rendering (arXiv 2406.12044)
#
# Three models. An **LLM planner** turns the prompt into the words to render and their boxes. A **textual
# diffusion model** draws a glyph image (white text on black) from that layout; it is pre-trained on single words,
# then on multi-word layouts. A **visual diffusion model** draws the image; the frozen textual model's mid-block
# feature and every up-block feature $g_\ell$ pass a trainable zero-initialised convolution $Z_\ell$ each and are
# added to the matching visual feature map $h_\ell$:
#
# $$h_\ell \leftarrow h_\ell + Z_\ell(g_\ell),\qquad
#   \mathcal L = \mathbb E_{x_0,g_0,t,\epsilon,\epsilon'}\big\|\epsilon - \epsilon_\theta\big(x_t, t, c_{\text{prompt}};
#   \{g_\ell(g_t, t, c_{\text{layout}})\}\big)\big\|^2,$$
#
# with $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ and the glyph $g_t$ noised the same way.
# At initialisation $Z_\ell = 0$, so the visual model starts as a plain prompt-conditioned UNet. jaxmm:
# `jaxmm.models.artist` (`Artist`, `ConditionalUNet`, the layout tokens and the grammar mask of the planner),
# `jaxmm.data.glyphs` (glyph data), `train/tasks/artist.py` (the comparison against a prompt-only UNet and a
# TextDiffuser-style glyph/mask-channel UNet, OCR-scored with rapidocr on the MARIO-Eval protocol). Small
# pixel-space UNets trained from scratch instead of Stable Diffusion, and how the textual model runs inside the
# visual stage, are **[reconstruction]** (docs/results/artist.md).
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
# ## The data and the planner's layout tokens
#
# A training scene is a poster with its prompt, the glyph image the textual model learns to draw and the box mask
# the TextDiffuser-style baseline gets. The planner writes a layout as tokens — per word its characters, then four
# box tokens on a 17-edge grid, then EOS — and decodes under a grammar mask that never allows an invalid token.

# %%
from jaxmm.data import glyphs
from jaxmm.models import artist

s = glyphs.scene(3, height=24, width=48, size_range=(10, 16), min_size=8)
ids = artist.encode_layout(s["words"], s["boxes"], (24, 48))
print(s["prompt"])
print("layout tokens:", ids, "->", artist.decode_layout(ids, (24, 48)))
state = artist.layout_grammar_init(1)
for t in ids[:len(s["words"][0])]:   # after a word's characters the grammar allows characters or a first box token
    state = artist.layout_grammar_step(state, jnp.asarray([t]))
allowed = np.flatnonzero(np.asarray(artist.layout_token_mask(state, jnp.asarray([8])))[0])
print("allowed next:", allowed.min(), "...", allowed.max(), f"({len(allowed)} of {artist.VOCAB_SIZE})")
fig, ax = plt.subplots(1, 3, figsize=(9, 1.6))
for a, im, name in zip(ax, (s["image"], s["glyph"], s["mask"]), ("image", "glyph (textual model)", "box mask")):
    a.imshow(im, cmap="gray"); a.set_title(name); a.axis("off")
plt.show()

# %% [markdown]
# ## Every stage at notebook size, through the same code path as the CLI
#
# `artist:tiny` is `python -m train --config artist:tiny`: textual pre-training (single words, then multi-word
# layouts), the LLM planner, the visual models, a self-trained CLIP for FID / CLIP-score, and the OCR evaluation of
# every method with rapidocr. The notebook runs less of it (`SMALL` below: ARTIST without the two baselines, one
# step of single-word glyph pre-training and none of multi-word pre-training or CLIP training; every stage still
# runs): on CPU nearly all of the time is XLA compiling each stage once. At 8x16 px nothing is legible: the numbers
# mean nothing, the path is what runs. `SIZE = "full"` runs `configs/artist.py`
# (24x48 px, all three methods, the docs/results/artist.md table).

# %%
SMALL = {"methods": ("artist",), "train.steps_multi": 0, "train.steps_clip": 0}
config = load_config("artist:tiny" if SIZE == "tiny" else "artist", **(SMALL if SIZE == "tiny" else {}))
workdir = os.path.join(os.environ.get("JAXMM_NOTEBOOK_TMP") or tempfile.mkdtemp(prefix="jaxmm_"), "artist")
summary = run(config, workdir)
display(Markdown((pathlib.Path(workdir) / "results.md").read_text()))

# %% [markdown]
# ## The key figure: samples per method
#
# docs/results/artist.md's grid, from this run's PNGs: the ground truth, the textual model's glyphs drawn from the
# planned layouts (what the visual model listens to through the zero convs), then each method's samples.

# %%
rows = ["ground_truth", "glyphs", *config.methods]
fig, axes = plt.subplots(len(rows), 1, figsize=(6, 1.2 * len(rows)))
for ax, name in zip(axes, rows):
    ax.imshow(plt.imread(os.path.join(workdir, f"samples_{name}_seed0.png"))); ax.axis("off")
    ax.set_title(name.replace("_", " "), fontsize=9, loc="left")
plt.tight_layout(); plt.show()

# %% [markdown]
# ## For a real run
#
# - `SIZE = "full"` (or `python -m train --config artist --workdir runs/artist`): 24x48 px, the three methods at the
#   same visual steps and batch; `artist:seeds3` for three seeds. At the CPU size of docs/results/artist.md every
#   method still draws noise: on a GPU raise `train.steps_visual` (and `steps_single` / `steps_multi`) by
#   10-100x, and `data.height` / `data.width` to 32x64 (where the ground truth reads at OCR F 0.95).
# - OCR needs `rapidocr` (a dependency of jaxmm); `eval.ocr_engine="tesseract"` uses Tesseract instead.
# - In your own model: `jaxmm.models.artist.Artist(textual, visual)` over any two `ConditionalUNet`s with the same
#   number of levels; `constrained_greedy` decodes layouts from any jaxmm LLM under the grammar mask.
