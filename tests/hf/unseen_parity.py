"""Acceptance check (issue 2, item 3): tiny HF folders of supported families that the tests never saw load with
`jaxmm.hf.from_pretrained` and match HF's float32 logits within 1e-4 (and HF's 20 greedy tokens).

    .venv/bin/python tests/hf/unseen_parity.py --ref-python /work/ref/venv/bin/python [--dir /tmp/unseen]

Step 1 runs this file under the side environment (torch + transformers; `--make`) to build fresh random models
of shapes the fixtures do not use (Qwen2 untied with 3 layers and 6/2 heads; Llama with head_dim 12 != 40/4,
MQA, attention and MLP biases, Llama-3 rope scaling; Mistral 8/4 heads of dim 4 with tied embeddings; a 28 px
CLIP vision tower with patch 7 and 3 heads) and their references; step 2 (jaxmm, no torch) compares.
Not a pytest test (needs torch); takes about a minute on CPU.
"""
import argparse
import math
import os
import subprocess
import sys

import numpy as np

SEQ, GEN = 40, 20


def make(out):
    import torch
    from transformers import (CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                              MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

    def redraw(model, seed):  # every tensor, at a scale where a wrong transpose or a dropped bias shows
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in model.named_parameters():
                z = torch.randn(p.shape, generator=g)
                if n.endswith("bias"):
                    p.copy_(0.1 * z)
                elif p.ndim == 1 and "embedding" not in n:
                    p.copy_(1 + 0.1 * z)
                elif "embed" in n:
                    p.copy_(z)
                else:
                    p.copy_(z / math.sqrt(int(np.prod(p.shape[1:]))))

    llms = {
        "qwen2_untied_3l": (Qwen2ForCausalLM, Qwen2Config(
            vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=6,
            num_key_value_heads=2, tie_word_embeddings=False, rope_theta=50000.0, rms_norm_eps=1e-5,
            max_position_embeddings=256)),
        "llama_headdim12_bias_llama3": (LlamaForCausalLM, LlamaConfig(
            vocab_size=200, hidden_size=40, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, head_dim=12, tie_word_embeddings=False, rms_norm_eps=1e-5, attention_bias=True,
            mlp_bias=True, max_position_embeddings=256, rope_theta=20000.0,
            rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 2.0,
                          "original_max_position_embeddings": 32})),
        "mistral_tied_8x4": (MistralForCausalLM, MistralConfig(
            vocab_size=150, hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=8,
            num_key_value_heads=4, head_dim=4, tie_word_embeddings=True, sliding_window=None,
            max_position_embeddings=256)),
    }
    rng = np.random.default_rng(0)
    for name, (cls, cfg) in llms.items():
        folder = os.path.join(out, name)
        model = cls(cfg).eval()
        redraw(model, 7)
        model.save_pretrained(folder, safe_serialization=True)
        model = cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
        ids = rng.integers(1, cfg.vocab_size, size=(3, SEQ))
        mask = np.ones_like(ids)
        ids[2, :11], mask[2, :11] = 0, 0  # one left-padded row
        pos = np.where(mask == 0, 1, np.cumsum(mask, 1) - 1)
        with torch.no_grad():
            logits = model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                           position_ids=torch.tensor(pos)).logits.numpy()
            gen = model.generate(torch.tensor(ids[:, :20]), attention_mask=torch.tensor(mask[:, :20]),
                                 do_sample=False, max_new_tokens=GEN, min_new_tokens=GEN, eos_token_id=None,
                                 pad_token_id=0).numpy()[:, 20:]
        np.savez(os.path.join(folder, "ref.npz"), ids=ids, mask=mask, logits=logits, gen=gen)
    cfg = CLIPVisionConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=3,
                           image_size=28, patch_size=7, num_channels=3, hidden_act="quick_gelu")
    model = CLIPVisionModel(cfg).eval()
    redraw(model, 9)
    folder = os.path.join(out, "clip_vision_28px")
    model.save_pretrained(folder, safe_serialization=True)
    px = rng.standard_normal((2, 28, 28, 3)).astype(np.float32)
    with torch.no_grad():
        r = model(pixel_values=torch.tensor(px.transpose(0, 3, 1, 2)))
    np.savez(os.path.join(folder, "ref.npz"), px=px, last=r.last_hidden_state.numpy(), pooled=r.pooler_output.numpy())


def check(out):
    import jax.numpy as jnp

    from jaxmm.hf import from_pretrained
    from jaxmm.models.llm import generate

    print("| folder | architecture | layers | heads / kv | head_dim | d_model | tied | max abs logit diff | "
          "max abs logit | 20 greedy tokens = HF |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for name in sorted(os.listdir(out)):
        folder = os.path.join(out, name)
        z = np.load(os.path.join(folder, "ref.npz"))
        model, params = from_pretrained(folder)
        if name.startswith("clip"):
            o = model.apply({"params": params}, jnp.asarray(z["px"]))
            e1 = float(np.abs(np.asarray(o["last_hidden_state"]) - z["last"]).max())
            e2 = float(np.abs(np.asarray(o["pooler_output"]) - z["pooled"]).max())
            worst = max(worst, e1, e2)
            print(f"| {name} | CLIPVisionModel | {model.config.num_layers} | {model.config.num_heads} | "
                  f"{model.config.d_model // model.config.num_heads} | {model.config.d_model} | - | "
                  f"last_hidden_state {e1:.1e}, pooler {e2:.1e} | - | - |")
            continue
        c = model.config
        logits = np.asarray(model.apply({"params": params}, jnp.asarray(z["ids"]), attention_mask=jnp.asarray(z["mask"])))
        real = z["mask"].astype(bool)
        err = float(np.abs(logits - z["logits"])[real].max())
        worst = max(worst, err)
        gen = np.asarray(generate(model, params, jnp.asarray(z["ids"][:, :20]), jnp.asarray(z["mask"][:, :20]),
                                  max_new_tokens=GEN))
        arch = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
        print(f"| {name} | {arch[name.split('_')[0]]} | {c.num_layers} | {c.num_heads} / {c.num_kv_heads} | "
              f"{c.head_dim} | {c.d_model} | {c.tie_embeddings} | {err:.1e} | {np.abs(z['logits']).max():.1f} | "
              f"{np.array_equal(gen, z['gen'])} |")
    print(f"\nworst max abs difference: {worst:.2e} (tolerance 1e-4): {'PASS' if worst < 1e-4 else 'FAIL'}")
    return worst < 1e-4


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/jaxmm_unseen_hf")
    ap.add_argument("--ref-python", help="python of the side environment with torch + transformers")
    ap.add_argument("--make", action="store_true", help="(internal) build the folders; needs torch")
    args = ap.parse_args()
    if args.make:
        make(args.dir)
        sys.exit(0)
    if args.ref_python:
        subprocess.run([args.ref_python, os.path.abspath(__file__), "--make", "--dir", args.dir], check=True,
                       stderr=subprocess.DEVNULL)
    sys.exit(0 if check(args.dir) else 1)
