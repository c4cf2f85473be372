"""LLaVA-1.5 (Liu et al. 2023, "Improved Baselines with Visual Instruction Tuning"): the two-stage recipe from a
Hugging Face vision tower and LLM, through the shared trainer's `mllm.qa` task.

    # stage 1: feature alignment. Projector only (encoder and LLM frozen) on caption data (LLaVA's 558k
    # BLIP-captioned LAION/CC/SBU subset), one epoch, lr 1e-3, batch 256
    python -m train --config configs/llava.py:stage1 --workdir runs/llava_stage1 \
        --config.model.init.encoder=hf/clip-vit-large-patch14-336 --config.model.init.llm=hf/vicuna-7b-v1.5 \
        --config.data.llava_json.train_json=data/blip_laion_cc_sbu_558k.json \
        --config.data.llava_json.image_folder=data/llava_pretrain_images
    # stage 2: visual instruction tuning. Projector + LLM (encoder frozen) on llava_v1_5_mix665k, lr 2e-5,
    # batch 128; the projector from stage 1's newest checkpoint (model.init.from_workdir), the LLM again from
    # its HF folder (stage 1 never changed it)
    python -m train --config configs/llava.py:stage2 --workdir runs/llava_stage2 \
        --config.model.init.from_workdir=runs/llava_stage1:projector  (+ the same init / data flags)
    # stage 2 with LoRA (rank 128, alpha 256, LLM frozen; LLaVA-1.5's LoRA variant, lr 2e-4):
    python -m train --config configs/llava.py:stage2_lora ...     # = stage2 + model.llm.lora_rank=128
                                                                  #   + optim.groups.llm.frozen=True

The model's shapes come from the folders' config.json (CLIP / SigLIP vision, Llama / Mistral / Qwen2 LLM),
image preprocessing from the vision folder's preprocessor_config.json, the tokenizer from the LLM folder
(`<image>` added as a token; the vocabulary grows when it does not fit). Not reproduced here: the published
LLaVA-1.5 numbers need the 7B/13B checkpoints and 8 A100s for a day; nothing of that size ran in this repository.
What runs here (tests/train/test_llava.py; its three-run test is slow-marked: ~3 min on 2 loaded CPU cores):
both stages on tiny random HF folders (tests/fixtures/hf/clip_model + llama_mha) and a generated LLaVA-JSON set,
checking which groups train.

Variants: stage1, stage2, stage2_lora, and `*_tiny` / `tiny` (= stage1_tiny) at fixture size on the embedded
text-in-image set (no files needed besides the committed fixtures). LLaVA-1.5 details as configs: `mlp2x_gelu`
projector, the penultimate CLIP layer without CLS (`model.vit.feature_layer=-2`), images padded to a square with
the processor's mean colour (the LLaVA-JSON loader), loss on the answers only, LR warmup 3% + cosine,
no weight decay. Sequence length 2048 (stage 2) is `data.max_len`.
"""
from __future__ import annotations

import os

import ml_collections

from jaxmm.config_utils import pick_variant

VARIANTS = ("stage1", "stage2", "stage2_lora", "tiny", "stage1_tiny", "stage2_tiny", "stage2_lora_tiny")
FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures", "hf")


def _trainer() -> dict:
    """The trainer's keys (as data, mirroring train.config.defaults() at this file's branch point; the loop
    checks them against its schema, so a stale key fails loudly rather than silently)."""
    return dict(
        task="mllm.qa", seed=0,
        train=dict(steps=100, batch_size=32, grad_accum=1, grad_clip=1.0, compute_dtype="float32", remat=False,
                   log_every=10, eval_every=0, eval_examples=0, eval_batch_size=64, progress=True, plots=True),
        optim=dict(name="adamw", lr=1e-3, schedule="warmup_cosine", warmup_steps=0, min_lr_ratio=0.0, b1=0.9,
                   b2=0.999, eps=1e-8, weight_decay=0.0, momentum=0.0, groups={}),
        mesh=dict(shape=(-1, 1, 1), rules=(("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"),
                                          ("heads", "tensor"), ("kv_heads", "tensor"), ("vocab", "tensor"),
                                          ("kv", None), ("length", None))),
        checkpoint=dict(every=0, keep=2, async_save=True))


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = pick_variant(__file__, variant, VARIANTS)
    tiny = variant == "tiny" or variant.endswith("_tiny")
    stage = "stage1" if variant == "tiny" else variant.removesuffix("_tiny")
    c = ml_collections.ConfigDict(_trainer())
    c.model = dict(encoder="vit", projector="mlp2x_gelu", vit=dict(feature_layer=-2),
                   llm=dict(lora_rank=0, lora_alpha=16.0),
                   init=dict(encoder="hf/clip-vit-large-patch14-336", llm="hf/vicuna-7b-v1.5", from_workdir=""))
    c.data = dict(source="llava_json", max_len=2048, max_prompt_len=1536, max_answer_len=512,
                  llava_json=dict(train_json="data/llava_v1_5_mix665k.json", eval_json="",
                                  image_folder="data/llava_images"))
    c.task_args = dict(eval_generate=False, max_new_tokens=0)
    c.optim.update(name="adamw", schedule="warmup_cosine", weight_decay=0.0)
    c.checkpoint.update(every=1000, keep=2)
    frozen = {"frozen": True}
    if stage == "stage1":
        c.data.llava_json.update(train_json="data/blip_laion_cc_sbu_558k.json",
                                 image_folder="data/llava_pretrain_images")
        c.data.max_len = c.data.max_prompt_len = 2048
        c.train.update(steps=2180, batch_size=256)  # 558k / 256: one epoch
        c.optim.update(lr=1e-3, warmup_steps=65)
        c.optim.groups = dict(encoder=frozen, llm=frozen)
    else:
        c.model.init.from_workdir = "runs/llava_stage1:projector"
        c.train.update(steps=5200, batch_size=128)  # 665k / 128: one epoch
        c.optim.update(lr=2e-5, warmup_steps=156)
        c.optim.groups = dict(encoder=frozen)
        if stage == "stage2_lora":
            c.model.llm.update(lora_rank=128, lora_alpha=256.0)
            c.optim.lr = 2e-4
            c.optim.groups = dict(encoder=frozen, llm=frozen)
    if tiny:  # fixture-size folders, the embedded text-in-image set, a few steps (seconds of compute)
        c.model.init.update(encoder=os.path.join(FIXTURES, "clip_model"), llm=os.path.join(FIXTURES, "llama_mha"))
        if stage != "stage1":
            c.model.init.from_workdir = "/tmp/llava_stage1_tiny:projector"
        if stage == "stage2_lora":
            c.model.llm.update(lora_rank=4, lora_alpha=8.0)
        c.data = dict(source="textvqa", train_examples=32, eval_examples=8, max_len=48, max_prompt_len=40,
                      max_answer_len=4, textvqa=dict(max_words=1, kinds=("read",), font_sizes=(8, 10)))
        c.train.update(steps=4, batch_size=8, log_every=1, eval_batch_size=8, progress=False, plots=False)
        c.optim.update(lr=1e-2 if stage == "stage1" else 1e-3, warmup_steps=0)
        c.checkpoint.update(every=0, async_save=False)
    return c
