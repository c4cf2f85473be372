# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Toffee: subject-driven editing and generation data without per-subject tuning (arXiv 2406.09305)
#
# Per-subject fine-tuning (DreamBooth) costs hundreds of steps per subject. Toffee trains two models **once** and
# builds data for any subject: a text-to-image draft of the prompt is detail-poor, a **Refiner** (a diffusion model
# conditioned on the subject's DINO patch embeddings) restores the subject's detail, a **View Generator** (trained on
# multi-view captures) renders it from new views, and segmentation plus DINO / CLIP filtering keep the good pairs.
# **ToffeeNet**, trained on those pairs, edits and generates with one model conditioned on the DINO embeddings $s$,
# the text $c$, an optional edit mask and an optional depth map; training pairs are replaced by reconstruction pairs
# (the reference is the target itself) with probability $p$, and at sampling a knob λ trades identity for text:
#
# $$\hat\epsilon = \epsilon_\theta(x_t, c, \varnothing_s) + \lambda\,\big(\epsilon_\theta(x_t, c, s) -
#   \epsilon_\theta(x_t, c, \varnothing_s)\big)$$
#
# (the paper does not publish λ's formula: this guidance form is **[reconstruction]**). jaxmm: `jaxmm.data.subjects`
# (procedural subjects rendered from any view with masks and depth), `jaxmm.models.dino` (a DINOv2-structured ViT
# trained by self-distillation here; real DINOv2 weights load with `jaxmm.hf.from_pretrained`),
# `jaxmm.models.toffee` (one `SubjectUNet` for the Refiner, the View Generator and ToffeeNet) and
# `train/tasks/toffee.py` (every stage, the pipeline's cost against per-subject fine-tuning, the λ and p tables).
# The text-to-image draft and Grounded-SAM are stand-ins (the renderer's blurred draft and its mask):
# docs/results/toffee.md.
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
# ## Procedural subjects: views, masks and depth
#
# docs/results/toffee.md's first figure, redrawn: subjects made of textured primitives, ray-cast in NumPy from
# random views and lights onto random backgrounds (rows: two subjects' views, then the first one's masks and depth,
# near = bright). The masks stand in for Grounded-SAM, the depth for ToffeeNet's optional depth condition.

# %%
from jaxmm.data import subjects

data = subjects.subject_images(2, 6, seed=0, size=32)
print(data["caption"][0], "|", data["caption"][6])
fig, axes = plt.subplots(4, 6, figsize=(7, 4.8))
panels = [data["image"][:6], data["image"][6:], data["mask"][:6], data["depth"][:6]]
for row, imgs in zip(axes, panels):
    for ax, im in zip(row, imgs):
        ax.imshow(im, cmap="gray"); ax.axis("off")
plt.tight_layout(); plt.show()

# %% [markdown]
# ## Every stage at notebook size, through the same code path as the CLI
#
# `toffee:tiny` is `python -m train --config toffee:tiny`: the DINO and CLIP stand-ins, the Refiner and the View
# Generator, the construction pipeline on held-out subjects (writing pairs.npz), the per-subject fine-tuning
# baseline, the pipeline run again on new subjects to build ToffeeNet's training pairs, ToffeeNet trained on those
# pairs, on the same pairs with the true renders and on rendered pairs, each at two values of p, and the λ sweep. The notebook cuts every training stage to one step
# (`SMALL`): on CPU the time goes to XLA compiling each stage once, and the models are untrained either way, so
# the numbers mean nothing; the path is what runs. `SIZE = "full"` runs `configs/toffee.py` (the tables of
# docs/results/toffee.md).

# %%
SMALL = {"dino.steps": 1, "clip.steps": 1, "unet.refiner_steps": 1, "unet.viewgen_steps": 1, "baseline.steps": 1,
         "toffee.steps": 1, "pipeline.pairs_per_subject": 1}
config = load_config("toffee:tiny" if SIZE == "tiny" else "toffee", **(SMALL if SIZE == "tiny" else {}))
workdir = os.path.join(os.environ.get("JAXMM_NOTEBOOK_TMP") or tempfile.mkdtemp(prefix="jaxmm_"), "toffee")
summary = run(config, workdir)
pairs = np.load(os.path.join(workdir, "pairs.npz"))
print({k: v.shape for k, v in pairs.items()})

# %% [markdown]
# ## The key figures: the construction pipeline and λ
#
# From this run's PNGs and tables: per held-out subject the draft, the Refiner's output, the true render and the
# View Generator's new view; then ToffeeNet's samples over λ (first row: the references); then results.md (the
# encoder checks, the pipeline's cost per pair against per-subject fine-tuning, the λ and p tables).

# %%
for name in ("toffee_pipeline.png", "toffee_lambda.png"):
    print(name)
    display(Image(filename=os.path.join(workdir, name), width=300))
display(Markdown((pathlib.Path(workdir) / "results.md").read_text()))

# %% [markdown]
# ## For a real run
#
# - `SIZE = "full"` (or `python -m train --config toffee --workdir runs/toffee`) trains every stage for hundreds of
#   steps at 32 px, ToffeeNet on the pipeline's own pairs against the same pairs with the true renders;
#   `toffee:p` is the p table (rendered pairs, two training seeds). On a GPU raise `data.size` (a multiple of 8),
#   `unet.width`, the step counts and `sample.steps`.
# - Real DINOv2 features: `jaxmm.hf.from_pretrained("<facebook/dinov2-small folder>")` loads HF weights into
#   `jaxmm.models.dino` (parity with HF `Dinov2Model`, tests/hf/test_dinov2.py).
# - The published DreamBench numbers (DINO 0.728, CLIP-I 0.817, CLIP-T 0.306) use OpenAI CLIP and DINO ViT-S/16;
#   the stand-ins here are self-trained, so compare directions, not values.
