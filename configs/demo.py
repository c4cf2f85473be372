"""The main job: instruction-tune a tiny LLaVA-style model (ViT + projector + LLM, all from scratch) on the
embedded text-rich image QA set.

    make demo        # = JAX_PLATFORMS=cpu .venv/bin/python -m train --config configs/demo.py --workdir runs/demo

Expected (2-core CPU): final eval exact-match accuracy ~0.9 on 256 held-out questions (chance ~0.14:
the most likely answer per question kind), in ~6-8 minutes; writes runs/demo/{metrics.jsonl, config.json,
summary.json, checkpoints/, loss.png, lr.png, eval.png}. Re-running resumes (or, when finished, only evaluates).
Variant `:tiny` is a 30-second smoke run.
"""
from __future__ import annotations

from train import config as config_lib
from train.tasks.mllm import _defaults


def get_config(variant: str | None = None):
    c = config_lib.defaults()
    task = _defaults()
    c.task = "mllm.qa"
    c.model, c.data, c.task_args = task.model, task.data, task.task_args

    # model: ViT 48x48 / patch 16 (9 features) -> 2-layer MLP projector -> 2-layer GQA Llama, width 64.
    # (Patch 8 = 36 features learned nothing visual within this budget: the LLM fitted the answer prior and
    # eval stayed at chance after 1000 steps; 9 coarser features are picked up within ~150 steps.)
    c.model.vit.update(dict(image_size=48, patch_size=16, d_model=64, num_layers=2, num_heads=4, mlp_dim=128))
    c.model.llm.update(dict(num_layers=2, d_model=64, num_heads=4, num_kv_heads=2, mlp_dim=128))
    # data: 1-3 words per image; questions "how many words", "what colour is the word <w>", "read the word"
    c.data.textvqa.max_words = 3
    c.data.textvqa.kinds = ("count", "color", "read")
    c.data.train_examples = 6000  # rendered once and cached; 8 epochs
    c.data.eval_examples = 256
    c.data.max_len, c.data.max_prompt_len, c.data.max_answer_len = 56, 48, 8

    c.train.steps = 1500
    c.train.batch_size = 32
    c.train.log_every = 25
    c.train.eval_every = 500
    c.train.eval_batch_size = 128
    c.optim.name = "adamw"
    c.optim.lr = 1e-3
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_steps = 50
    c.optim.min_lr_ratio = 0.1
    c.optim.weight_decay = 0.0
    c.mesh.shape = (-1, 1, 1)
    c.checkpoint.every = 500
    c.checkpoint.keep = 2

    if variant == "tiny":
        c.data.train_examples, c.data.eval_examples = 256, 64
        c.train.steps, c.train.eval_every, c.train.eval_batch_size = 20, 0, 64
        c.checkpoint.every = 10
    elif variant not in (None, ""):
        raise ValueError(f"variant: expected None or 'tiny', got {variant!r}")
    return c
