"""LaRA (TRINS, Zhang et al. CVPR 2024, arXiv 2406.06730): an MLLM that reads through OCR words fed as text tokens
beside the visual tokens of a frozen low-resolution encoder; TRINS-Cap / TRINS-VQA / non-text VQA evaluation
(train/tasks/lara.py, data: jaxmm/data/lara.py).

    # smoke test (seconds; the tiny HF CLIP fixture as the frozen encoder, rapidocr OCR):
    python -m train --config configs/lara.py:tiny --workdir /tmp/lara_tiny
    # the ablation at CPU size (docs/results/lara.md): stage 0 trains the low-res encoder (no OCR), then every
    # variant starts from its encoder + projector (model.init.from_workdir) and freezes the encoder
    python -m train --config configs/lara.py:small_pretrain --workdir runs/lara/pretrain
    for v in small_no_ocr small_oracle small_rapidocr small_rapidocr_layout small_rapidocr_tuned; do
      python -m train --config configs/lara.py:$v --workdir runs/lara/$v --config.seed=0; done
    # the published shape (needs the HF folders; not run here): CLIP ViT-L/14 at 224 px, frozen, + a 7B LLM
    python -m train --config configs/lara.py:paper --workdir runs/lara_paper \
        --config.model.init.encoder=hf/clip-vit-large-patch14 --config.model.init.llm=hf/vicuna-7b-v1.5

Variants (the table's): `small_no_ocr` / `small_oracle` / `small_rapidocr` (OCR words: none, the page's truth,
rapidocr on the full-resolution page); `small_rapidocr_layout` (the OCR text layout-recovered, LATIN style, instead
of words joined by spaces); `small_rapidocr_tuned` (the low-res encoder trained instead of frozen). All `small_*`
runs: 48 px images (text illegible: reading must come from OCR), a 2-layer d=64 LLM from scratch with a word-level
BPE tokenizer (committed in configs/lara_bpe, 2048 tokens: `jaxmm.data.tokenizers.train_word_bpe` on
`jaxmm.data.trins.word_corpus`; the command beside `BPE` below regenerates it byte for byte); every generator word
is one token in the OCR block, the question and the answer, so copying an answer is one step per word instead of
one per byte), 1500 steps of 8 examples (12,000) from 1024
training pages (receipts, posters, signs, charts, tables), a mix of 10% caption instruction and 90% VQA,
sequences of 224 tokens, OCR text budget 96 tokens; evaluated on 64 unseen pages. Why these sizes
(docs/results/lara.md, "Making copying learnable"): with bytes, 128 pages and 400 steps nothing was copied
(TRINS-VQA exact 0); 128 pages are memorised (train loss 0.7, eval 3.5), so the pages went up, and the word
tokenizer shortens every copy. `small_pretrain`: 300 steps, half captions, no OCR, everything trained. Each
`small_*` run is ~340-390 CPU-s (user + sys; the first rapidocr run also reads the 1088 pages once into the OCR
cache: 1130 CPU-s in all, measured on the shared 2 cores).
`paper`: what the published model's setup maps to (**[reconstruction]**: the LLM and batch sizes are not given in
the abstract; LLaVA-1.5's stage-2 settings are used).
"""
from __future__ import annotations

import os

import ml_collections

from jaxmm.config_utils import pick_variant

ABLATIONS = ("small_no_ocr", "small_oracle", "small_rapidocr", "small_rapidocr_layout", "small_rapidocr_tuned")
VARIANTS = ("paper", "tiny", "small_pretrain") + ABLATIONS
FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures", "hf")
PRETRAIN_WORKDIR = "runs/lara/pretrain"
# the committed word BPE (vocab 2048; deterministic, so this regenerates it byte for byte):
# python -c "from jaxmm.data.tokenizers import train_word_bpe; from jaxmm.data.trins import word_corpus;
#            train_word_bpe(word_corpus(), 'configs/lara_bpe', vocab_size=2048)"
BPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lara_bpe")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = pick_variant(__file__, variant, VARIANTS)
    c = ml_collections.ConfigDict(dict(task="lara", seed=0))
    c.train = dict(steps=1500, batch_size=8, log_every=100, eval_every=0, eval_batch_size=32, progress=True,
                   plots=True)
    c.optim = dict(name="adamw", lr=3e-3, schedule="warmup_cosine", warmup_steps=20, weight_decay=0.0,
                   groups=dict(encoder=dict(frozen=True)))
    c.checkpoint = dict(every=0, keep=1, async_save=False)
    c.model = dict(encoder="vit", projector="mlp2x_gelu",
                   vit=dict(image_size=48, patch_size=8, d_model=64, num_layers=2, num_heads=4, mlp_dim=128),
                   llm=dict(num_layers=2, d_model=64, num_heads=4, num_kv_heads=2, mlp_dim=256),
                   init=dict(from_workdir=f"{PRETRAIN_WORKDIR}:encoder,projector"))
    c.data = dict(source="lara", train_examples=12_000, eval_examples=128, max_len=224, max_prompt_len=160,
                  max_answer_len=16, tokenizer=BPE,
                  lara=dict(ocr="rapidocr", layout=False, ocr_budget=96, train_pages=1024, eval_pages=64,
                            caption_fraction=0.1))
    c.task_args = dict(visual_examples=64, caption_examples=32, caption_tokens=128)
    if variant == "paper":
        c.model = dict(encoder="vit", projector="mlp2x_gelu", vit=dict(feature_layer=-2),
                       init=dict(encoder="hf/clip-vit-large-patch14", llm="hf/vicuna-7b-v1.5", from_workdir=""))
        c.data.update(train_examples=248_000, eval_examples=1000, max_len=2048, max_prompt_len=1536,
                      max_answer_len=64, tokenizer="")   # the LLM folder's tokenizer
        c.data.lara.update(ocr_budget=1024, train_pages=39_153, eval_pages=1000)
        c.train.update(steps=1940, batch_size=128)   # ~248k samples, one epoch
        c.optim.update(lr=2e-5, warmup_steps=58)
        c.task_args.update(visual_examples=1000, caption_examples=1000, caption_tokens=160)
    elif variant == "tiny":   # seconds: the tiny CLIP fixture (16 px) as frozen encoder, rapidocr, 3 steps
        c.model = dict(encoder="vit", projector="mlp2x_gelu", llm=dict(num_layers=1, d_model=32, num_heads=2,
                                                                       num_kv_heads=1, mlp_dim=64),
                       init=dict(encoder=os.path.join(FIXTURES, "clip_model"), from_workdir=""))
        c.data.update(train_examples=8, eval_examples=4, max_len=224, max_prompt_len=160, max_answer_len=16,
                      tokenizer="")   # bytes
        c.data.lara.update(ocr_budget=64, train_pages=2, eval_pages=2, page_kinds=("sign", "poster"))
        c.train.update(steps=3, batch_size=8, log_every=1, eval_batch_size=8, progress=False, plots=False)
        c.task_args.update(visual_examples=2, caption_examples=2, caption_tokens=17,  # = VQA steps: one compile
                           caption_tokenizer="whitespace", caption_metrics=("bleu", "rouge", "cider"))
    elif variant == "small_pretrain":   # stage 0: the low-res encoder, trained with everything, no OCR
        c.model.init.from_workdir = ""
        c.optim.groups = {}
        c.train.steps, c.data.train_examples = 300, 2400
        c.data.lara.update(ocr="none", caption_fraction=0.5)
        c.task_args.update(caption_examples=0)
    else:
        ocr = {"small_no_ocr": "none", "small_oracle": "oracle"}.get(variant, "rapidocr")
        c.data.lara.update(ocr=ocr, layout=variant == "small_rapidocr_layout")
        if variant == "small_rapidocr_tuned":
            c.optim.groups = {}
    return c
