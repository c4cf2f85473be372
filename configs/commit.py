"""CoMMIT (arXiv 2407.20454): balanced instruction tuning of a tiny MLLM, vision or audio, LLM full or LoRA.

    .venv/bin/python -m train --config configs/commit.py:vision --workdir runs/commit_vision
    .venv/bin/python -m train --config configs/commit.py:audio_lora --workdir runs/commit_audio_lora \
        --config.task_args.method=constant        # constant | feature_cd | language_cd | commit | commit_clr

Expected: `vision` is the demo's model and data (ViT 32 px / patch 4 + MLP projector + 2-layer Llama, width 64;
1-2 words, count/colour/read questions), 900 steps, constant base LR 2e-3; `audio` the same LLM behind a Whisper-style encoder on DTMF log-mels.
Neither full variant was timed end to end here (the machine was overloaded, load ~15); the demo (configs/
demo.py = this task, method commit, 1000 steps, warmup-cosine base LR) is the measured reference — see its docstring. `*_lora`
freeze the (randomly initialised) LLM and train rank-8 LoRA in it + encoder + projector: expect them to learn
far less (no pretrained LLM exists here). A run ends with `[summary] ... eval_accuracy=... kappa_mean=...`
and writes kappa.png, loss.png, lr.png, eval.png, metrics.jsonl into the workdir. Measured small-scale
results (the `_small` variants, 150 steps): docs/results/commit.md.

Variants: `<vision|audio>[_lora][_small|_tiny]` (`_small`: the experiments' size, ~1 min a run; `_tiny`: a
smoke run in seconds), and the experiments (each writes a Markdown table + PNGs into --workdir):
    .venv/bin/python -m train --config configs/commit.py:sweep_imbalance   --workdir runs/commit_imbalance
    .venv/bin/python -m train --config configs/commit.py:sweep_convergence --workdir runs/commit_convergence
    .venv/bin/python -m train --config configs/commit.py:sweep_overhead    --workdir runs/commit_overhead
    .venv/bin/python -m train --config configs/commit.py:sweep_tiny        --workdir /tmp/commit_sweep_tiny  # smoke
(results and their run times: docs/results/commit.md). The κ formula, LR rule/clip, aux weight and divergence
are [reconstruction]s, each a `task_args` key (train/tasks/commit.py); κ is measured on the step at the base
learning rates (`kappa_lr="base"`), the aux loss targets the leading side's last measured step.
"""
from __future__ import annotations

import ml_collections


def run_config(modality: str = "image", lora: bool = False, size: str = "full") -> ml_collections.ConfigDict:
    """One `commit.train` run: only what differs from the trainer's and the task's defaults."""
    if size not in ("full", "small", "tiny"):
        raise ValueError(f"size: expected 'full', 'small' or 'tiny', got {size!r}")
    encoder, source = {"image": ("vit", "textvqa"), "audio": ("audio", "audioqa")}[modality]
    c = ml_collections.ConfigDict()
    c.task = "commit.train"
    # model: the demo's ViT 32x32/4 (64 features) or a Whisper-style audio encoder (100 frames -> 50 features)
    # -> 2-layer MLP projector -> 2-layer GQA Llama, width 64, trained from scratch
    c.model = dict(encoder=encoder,
                   vit=dict(image_size=32, patch_size=4, d_model=64, num_layers=2, num_heads=4, mlp_dim=128),
                   audio=dict(n_mels=80, max_frames=100, d_model=64, num_layers=2, num_heads=4, mlp_dim=128, pool=2),
                   llm=dict(num_layers=2, d_model=64, num_heads=4, num_kv_heads=2, mlp_dim=128))
    c.data = dict(source=source, textvqa=dict(max_words=2, kinds=("count", "color", "read"), font_sizes=(10, 14)),
                  audioqa={}, train_examples=6000, eval_examples=256, max_len=56, max_prompt_len=48,
                  max_answer_len=8)
    c.train = dict(steps=900, batch_size=32, log_every=10, eval_every=300, eval_batch_size=128)
    # the methods shape the LRs (lr_scale); the base is constant
    c.optim = dict(name="adamw", lr=2e-3, schedule="constant", weight_decay=0.01)
    c.checkpoint = dict(every=300, keep=2)
    # CoMMIT: κ every 10 steps on 16 probe examples, LRs rewritten every L_lr = 50 steps
    c.task_args = dict(method="commit", measure_every=10, lr_every=50, probe_size=16)

    if lora:  # freeze the LLM, rank-8 LoRA on its q/v projections
        c.model.llm.lora_rank = 8
        c.optim.groups = dict(llm=dict(frozen=True))

    if size == "small":  # the experiments: ~0.1 s a step
        c.model.vit.update(dict(image_size=32, patch_size=8, d_model=48, num_layers=1, num_heads=4, mlp_dim=96))
        c.model.audio.update(dict(max_frames=50, d_model=48, num_layers=1, num_heads=4, mlp_dim=96))
        c.model.llm.update(dict(num_layers=2, d_model=48, num_heads=4, num_kv_heads=2, mlp_dim=96))
        c.data.textvqa.update(dict(max_words=2, kinds=("read", "count"), font_sizes=(14, 18)))
        c.data.audioqa.update(dict(max_digits=2, duration=0.5, kinds=("digit", "count")))
        c.data.update(dict(train_examples=2000, eval_examples=64, max_len=48, max_prompt_len=40, max_answer_len=6))
        c.train.update(dict(steps=150, batch_size=16, eval_every=0, eval_batch_size=64, log_every=5, progress=False))
        c.checkpoint.every = 0
        c.task_args.lr_every = 30  # 3 measurements per window
    elif size == "tiny":  # smoke run
        c.model.vit.update(dict(image_size=16, patch_size=8, d_model=32, num_layers=1, num_heads=2, mlp_dim=64))
        c.model.audio.update(dict(max_frames=50, d_model=32, num_layers=1, num_heads=2, mlp_dim=64))
        c.model.llm.update(dict(num_layers=1, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64))
        c.data.textvqa.update(dict(max_words=1, kinds=("read",), font_sizes=(10, 12)))
        c.data.audioqa.update(dict(max_digits=1, duration=0.5, kinds=("digit",)))
        c.data.update(dict(train_examples=64, eval_examples=16, max_len=48, max_prompt_len=40, max_answer_len=4))
        c.train.update(dict(steps=8, batch_size=16, log_every=1, eval_every=0, eval_batch_size=16, progress=False))
        c.checkpoint.update(dict(every=0, async_save=False))
        c.task_args.update(dict(measure_every=2, lr_every=4, probe_size=8))
    return c


def sweep_config(kind: str) -> ml_collections.ConfigDict:
    """The experiment drivers (experiment commit_sweep): every run is `run_config(..., size="small")` + overrides."""
    c = ml_collections.ConfigDict()
    c.task = "commit_sweep"
    c.seed = 0
    c.sweep = ml_collections.ConfigDict(dict(kind=kind, modalities=("image", "audio"), lora=False))
    c.sweep.base_image = run_config("image", size="small")
    c.sweep.base_audio = run_config("audio", size="small")
    if kind == "imbalance":  # constant LR with the encoder side's LR x1, x10, x0.1; κ every 5 steps
        c.sweep.modalities = ("image",)
        c.sweep.encoder_lr_factors = (1.0, 10.0, 0.1)
        c.sweep.seeds = (0,)
    elif kind == "convergence":  # 5 methods x LR sweep x 3 seeds x 2 modalities
        c.sweep.methods = ("constant", "feature_cd", "language_cd", "commit", "commit_clr")
        c.sweep.lrs = (1e-3, 3e-3)
        c.sweep.seeds = (0, 1, 2)
        c.sweep.target_loss = {"image": 1.0, "audio": 1.0}
    elif kind == "overhead":  # constant without κ, constant with κ every 10 steps, commit (κ + aux loss)
        c.sweep.modalities = ("image",)
        c.sweep.measure_every = (0, 10)
        c.sweep.seeds = (0,)
    else:
        raise ValueError(f"kind: expected imbalance, convergence or overhead, got {kind!r}")
    return c


def get_config(variant: str | None = None):
    variant = variant or "vision"
    if variant == "sweep_tiny":  # smoke test of the sweep path: the imbalance sweep, one tiny run
        c = sweep_config("imbalance")
        c.sweep.update(dict(base_image=run_config("image", size="tiny"), encoder_lr_factors=(1.0,)))
        return c
    if variant.startswith("sweep_"):
        return sweep_config(variant[len("sweep_"):])
    parts = variant.split("_")
    names = {"vision": "image", "audio": "audio"}
    if parts[0] not in names or any(p not in ("lora", "small", "tiny") for p in parts[1:]):
        raise ValueError(f"variant: expected <vision|audio>[_lora][_small|_tiny] or sweep_<imbalance|convergence|"
                         f"overhead>, got {variant!r}")
    size = "small" if "small" in parts else "tiny" if "tiny" in parts else "full"
    return run_config(names[parts[0]], lora="lora" in parts, size=size)
