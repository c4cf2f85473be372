# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # TRINS + LaRA: an MLLM that reads through OCR words beside its visual tokens (arXiv 2406.06730)
#
# LaRA keeps the visual encoder **frozen and at low resolution** and adds an OCR component that is not a network:
# the words an OCR engine reads on the full-resolution page go into the prompt as ordinary text tokens, beside the
# visual tokens. The LLM is trained on the answer tokens only:
#
# $$\mathcal L = -\sum_{t} \log p_\theta\big(a_t \,\big|\, a_{<t},\; P(E(x_{\text{low-res}})),\;
#   \mathrm{tok}(\mathrm{OCR}(x_{\text{full}})),\; q\big),$$
#
# with $E$ the frozen encoder, $P$ the projector and $q$ the instruction. TRINS is the paper's dataset (text-rich
# images, long human captions, reading questions); its benchmarks are TRINS-Cap (BLEU, METEOR, ROUGE-L, CIDEr) and
# TRINS-VQA (exact / contains accuracy). jaxmm: `jaxmm.data.lara` (TRINS-style examples from the page generator,
# with the OCR block of `jaxmm.data.ocr_text`, shared with LLaVA-Read), `train/tasks/lara.py` (the `mllm.qa` model
# and trainer, plus the three benchmarks and a non-text VQA set). The instruction mix is **[reconstruction]**
# (docs/results/lara.md).
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
# ## What the model is given
#
# A generated text-rich page at full resolution, the 48 px view the frozen encoder gets (its small text is not
# legible: reading has to come from the OCR tokens), and the user turn with the OCR block (here the page's true
# words, the `oracle` ablation; the run below reads them with rapidocr).

# %%
from jaxmm.data import lara
from jaxmm.data.textrich import make_page, square_view

page = make_page(5, "receipt")
ex = lara.LaraData(1, split="eval", task="vqa", ocr="oracle", pages=1, page_kinds=("receipt",), ocr_budget=96)[0]
fig, ax = plt.subplots(1, 2, figsize=(7, 3.5))
ax[0].imshow(page.image); ax[0].set_title(f"page {page.image.shape[1]}x{page.image.shape[0]} px"); ax[0].axis("off")
ax[1].imshow(square_view(page.image, 48)); ax[1].set_title("what the encoder sees (48 px)"); ax[1].axis("off")
plt.show()
print("OCR text of this page (oracle):", lara.page_ocr_text(page, "oracle")[:160], "...")
print("\na training example's user turn:\n" + ex["conversations"][0][1])
print("answer:", ex["answer"], f"(kind {ex['kind']})")

# %% [markdown]
# ## A tiny LaRA run through the trainer
#
# `lara:tiny` is `python -m train --config lara:tiny`: the tiny HF CLIP fixture as the frozen encoder, rapidocr on
# the full-resolution pages, a 1-layer LLM, a few steps, then the three benchmarks with greedy decoding. At this
# size the scores are 0: the run shows the path, not a result. `SIZE = "full"` runs `lara:small_rapidocr`, a row of
# the docs/results/lara.md table (it starts from `lara:small_pretrain`'s encoder: run that first).

# %%
config = load_config("lara:tiny" if SIZE == "tiny" else "lara:small_rapidocr")
workdir = os.path.join(os.environ.get("JAXMM_NOTEBOOK_TMP") or tempfile.mkdtemp(prefix="jaxmm_"), "lara")
summary = run(config, workdir)

# %% [markdown]
# ## The key table, from this run
#
# docs/results/lara.md's ablation row for this run (its summary.json), and the training loss from metrics.jsonl.

# %%
cols = [("TRINS-VQA exact", "eval_trins_vqa_exact"), ("TRINS-VQA contains", "eval_trins_vqa_contains"),
        ("non-text exact", "eval_visual_exact"), ("non-text contains", "eval_visual_contains"),
        ("Cap BLEU-4", "eval_trins_cap_BLEU-4"), ("Cap METEOR", "eval_trins_cap_METEOR"),
        ("Cap ROUGE-L", "eval_trins_cap_ROUGE-L"), ("Cap CIDEr", "eval_trins_cap_CIDEr"),
        ("VQA answer loss", "eval_loss")]
cell = lambda k: f"{summary[k]:.3f}" if k in summary else "—"  # METEOR needs Java: the tiny config leaves it out
ocr = config.data.lara.ocr + (", layout" if config.data.lara.layout else "")
display(Markdown("| run | " + " | ".join(c for c, _ in cols) + " |\n|---" * (len(cols) + 1) + "|\n"
                 + f"| {SIZE}: {ocr} OCR words | " + " | ".join(cell(k) for _, k in cols) + " |"))
rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
loss = [(r["step"], r["loss"]) for r in rows if "loss" in r]
plt.figure(figsize=(4, 2.5)); plt.plot(*zip(*loss), "o-"); plt.xlabel("step"); plt.ylabel("answer-token loss")
plt.title(f"LaRA ({SIZE}) training"); plt.tight_layout(); plt.show()

# %% [markdown]
# ## For a real run
#
# - The ablation of docs/results/lara.md: `lara:small_pretrain` (stage 0, the low-res encoder), then
#   `lara:small_no_ocr`, `small_oracle`, `small_rapidocr`, `small_rapidocr_layout`, `small_rapidocr_tuned`, each
#   with `--config.seed=0,1,2`; set `JAXMM_OCR_CACHE` to read each page once.
# - No reading is learned by a 2-layer LLM trained from scratch (TRINS-VQA is 0 at CPU size): on a GPU/TPU start
#   from a pretrained LLM, `lara:paper` with `--config.model.init.encoder=<CLIP ViT-L/14 folder>` and
#   `--config.model.init.llm=<Vicuna/Llama folder>` (the published setup, **[reconstruction]** of its batch sizes).
# - Your own TRINS folder: `data.source=trins` (`jaxmm.data.trins.TrinsSource`).
