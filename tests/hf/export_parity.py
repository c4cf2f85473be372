"""Acceptance check (issue 15, item 5): folders written by `jaxmm.hf.save_pretrained` load in transformers (no
missing / unexpected / mismatched weights) and give jaxmm's outputs within 1e-4.

    .venv/bin/python tests/hf/export_parity.py --ref-python /work/ref/venv/bin/python [--dir /tmp/jaxmm_export]

Step 1 (jaxmm): builds models, exports them and stores inputs + jaxmm's float32 outputs: the four fixture LLMs
re-exported; a Qwen2 with a trained LoRA adapter (exported merged; jaxmm's outputs from the unmerged model);
a Llama initialised by jaxmm (not from HF: GQA 4/2, head_dim 12 != 40/4, attention + MLP biases, Llama-3 rope
scaling, untied) written in 50 KB shards; a jaxmm-initialised CLIP vision tower; a tiny MLLM (ViT + projector +
Llama with LoRA) written as LlavaForConditionalGeneration, compared on text only and with an image (HF's
input holds N image tokens where jaxmm holds one placeholder); the encoder families, each re-exported from its
fixture and initialised by jaxmm: SigLIP vision (SiglipVisionModel, with and without the pooling head), CLIP text
(CLIPTextModel; CLIPTextModelWithProjection from CLIPModel's text tower and jaxmm-initialised), CLIP vision with
projection (CLIPVisionModelWithProjection from CLIPModel's vision tower) and the Whisper encoder (transformers'
WhisperEncoder, loaded by that class: AutoModel would build a WhisperModel and leave its decoder random).
Step 2 (`--hf`, run under the side env) loads each folder with transformers (eager attention, float32,
`output_loading_info=True`). Step 3 compares.
Not a pytest test (needs torch); about a minute on CPU.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures", "hf")
TOL = 1e-4


def build(out):
    import dataclasses

    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from jaxmm.hf import from_pretrained, save_pretrained
    from jaxmm.models import encoders
    from jaxmm.models.audio import AudioConfig, AudioEncoder
    from jaxmm.models.llm import LLM, LLMConfig
    from jaxmm.models.text_encoder import TextEncoder, TextEncoderConfig
    from jaxmm.models.mllm import MLLM, MLLMConfig
    from jaxmm.models.vit import ViT, ViTConfig

    def noisy(params, scale, seed):  # every tensor away from its init (LoRA B nonzero, norms not 1)
        leaves, tree = jax.tree.flatten(nn.unbox(params))
        keys = jax.random.split(jax.random.key(seed), len(leaves))
        return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])

    rng = np.random.default_rng(0)
    cases = {}

    def llm_case(name, model, params, kind="llm", **save_kw):
        folder = os.path.join(out, name)
        save_pretrained(model, params, folder, **save_kw)
        ids = rng.integers(1, model.config.vocab_size, size=(2, 16)).astype(np.int32)
        mask = np.ones_like(ids)
        ids[1, :5], mask[1, :5] = 0, 0  # a left-padded row
        logits = np.asarray(model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
        np.savez(os.path.join(folder, "jaxmm.npz"), ids=ids, mask=mask, logits=logits)
        cases[name] = kind

    for name, arch in (("llama_mha", None), ("llama3_gqa_tied", None), ("mistral", "MistralForCausalLM"),
                       ("qwen2_tied", None)):
        model, params = from_pretrained(os.path.join(FIXTURES, name))
        llm_case(f"reexport_{name}", model, params, architecture=arch)
    model, params = from_pretrained(os.path.join(FIXTURES, "qwen2_tied"), lora_rank=4, lora_alpha=8.0,
                                    lora_targets=("q", "k", "v", "o", "up", "down"))
    llm_case("qwen2_lora_merged", model, noisy(params, 0.05, 1))
    cfg = LLMConfig(vocab_size=200, num_layers=2, d_model=40, num_heads=4, num_kv_heads=2, head_dim=12, mlp_dim=72,
                    qkv_bias=True, out_bias=True, mlp_bias=True, rope_theta=20000.0, norm_eps=1e-5,
                    rope_scaling=(("factor", 4.0), ("high_freq_factor", 2.0), ("low_freq_factor", 1.0),
                                  ("original_max_position_embeddings", 8), ("rope_type", "llama3")))
    model = LLM(cfg)
    params = noisy(model.init(jax.random.key(3), jnp.zeros((1, 4), jnp.int32))["params"], 0.1, 4)
    llm_case("llama_jaxmm_init_sharded", model, params, max_shard_size="50KB")

    vit = ViT(ViTConfig(image_size=28, patch_size=7, d_model=48, num_layers=2, num_heads=3, mlp_dim=64))
    px = rng.standard_normal((2, 28, 28, 3)).astype(np.float32)
    params = noisy(vit.init(jax.random.key(5), jnp.asarray(px))["params"], 0.1, 6)
    folder = os.path.join(out, "clip_vision_jaxmm_init")
    save_pretrained(vit, params, folder)
    o = vit.apply({"params": params}, jnp.asarray(px))
    np.savez(os.path.join(folder, "jaxmm.npz"), px=px, last=np.asarray(o["last_hidden_state"]),
             pooled=np.asarray(o["pooler_output"]))
    cases["clip_vision_jaxmm_init"] = "clip"

    enc = encoders.get("vit").build_config({"image_size": 16, "patch_size": 8, "d_model": 32, "num_layers": 2,
                                            "num_heads": 2, "mlp_dim": 64})
    llm = LLMConfig(vocab_size=64, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64,
                    lora_rank=2, lora_targets=("q", "v"))
    mllm = MLLM(MLLMConfig(llm=llm, placeholder_id=7, encoder="vit", encoder_config=enc))
    n = enc.num_features
    ids = np.array([[3, 7, 9, 10, 11, 12, 13], [4, 5, 6, 7, 20, 21, 22]], np.int32)
    img = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    params = noisy(mllm.init(jax.random.key(7), jnp.asarray(ids), jnp.asarray(img))["params"], 0.1, 8)
    folder = os.path.join(out, "llava_jaxmm_mllm")
    save_pretrained(mllm, params, folder)
    logits = np.asarray(mllm.apply({"params": params}, jnp.asarray(ids), jnp.asarray(img)))
    text = np.asarray(LLM(llm).apply({"params": params["llm"]}, jnp.asarray(ids[:, 2:])))  # no placeholder
    hf_ids = np.stack([np.concatenate([r[:list(r).index(7)], [7] * n, r[list(r).index(7) + 1:]]) for r in ids])
    np.savez(os.path.join(folder, "jaxmm.npz"), ids=ids, hf_ids=hf_ids, img=img, logits=logits, text=text, n=n)
    cases["llava_jaxmm_mllm"] = "llava"

    def enc_case(name, model, params, inputs, **save_kw):  # inputs in jaxmm's layout: px NHWC, ids + mask, mel
        folder = os.path.join(out, name)
        save_pretrained(model, params, folder, **save_kw)
        args = [jnp.asarray(inputs[k]) for k in ("px", "ids", "mask", "mel") if k in inputs]
        o = model.apply({"params": params}, *args)
        outs = {f"out_{k}": np.asarray(v) for k, v in o.items()
                if k in ("last_hidden_state", "pooler_output", "image_embeds", "text_embeds")}
        np.savez(os.path.join(folder, "jaxmm.npz"), **{f"in_{k}": v for k, v in inputs.items()}, **outs)
        cases[name] = "enc"

    for fixture, tower in (("siglip_vision", None), ("clip_text", None), ("clip_model", "text"),
                           ("clip_model", None), ("whisper_encoder", None)):
        model, params = from_pretrained(os.path.join(FIXTURES, fixture), tower=tower)
        ref = dict(np.load(os.path.join(FIXTURES, fixture, "reference.npz")))
        if fixture == "whisper_encoder":
            inputs = {"mel": ref["input_features"]}
        elif tower == "text" or fixture == "clip_text":
            inputs = {"ids": ref["input_ids"], "mask": ref["attention_mask"]}
        else:
            inputs = {"px": ref["pixel_values"]}
        enc_case(f"reexport_{fixture}" + (f"_{tower}" if tower else ""), model, params, inputs)
    siglip = ViT(ViTConfig(image_size=28, patch_size=7, d_model=48, num_layers=2, num_heads=3, mlp_dim=64,
                           mlp="gelu_tanh", norm_eps=1e-6, class_token=False, pre_norm=False, patch_bias=True,
                           pool="map"))
    px = rng.standard_normal((2, 28, 28, 3)).astype(np.float32)
    params = noisy(siglip.init(jax.random.key(9), jnp.asarray(px))["params"], 0.1, 10)
    enc_case("siglip_vision_jaxmm_init", siglip, params, {"px": px})
    headless = ViT(dataclasses.replace(siglip.config, pool="none"))
    enc_case("siglip_vision_jaxmm_init_no_head", headless, {k: v for k, v in params.items() if k != "head"},
             {"px": px})
    text = TextEncoder(TextEncoderConfig(vocab_size=90, max_positions=16, d_model=40, num_layers=2, num_heads=4,
                                         mlp_dim=72, mlp="gelu", eos_token_id=5, projection_dim=24))
    ids = rng.integers(6, 90, size=(2, 16)).astype(np.int32)
    ids[0, 11], ids[1, 7] = 5, 5  # end of text inside the row; row 1 right-padded after it
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    params = noisy(text.init(jax.random.key(11), jnp.asarray(ids), jnp.asarray(mask))["params"], 0.1, 12)
    enc_case("clip_text_jaxmm_init_projection", text, params, {"ids": ids, "mask": mask})
    audio = AudioEncoder(AudioConfig(n_mels=20, max_frames=40, d_model=48, num_layers=2, num_heads=4, mlp_dim=96))
    mel = rng.standard_normal((2, 40, 20)).astype(np.float32)
    params = noisy(audio.init(jax.random.key(13), jnp.asarray(mel))["params"], 0.1, 14)
    enc_case("whisper_encoder_jaxmm_init", audio, params, {"mel": mel})
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(cases, f)


def run_hf(out):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, CLIPVisionModel, LlavaForConditionalGeneration
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    cases = json.load(open(os.path.join(out, "cases.json")))
    info_all = {"transformers": transformers.__version__, "torch": torch.__version__}
    for name, kind in cases.items():
        folder = os.path.join(out, name)
        z = np.load(os.path.join(folder, "jaxmm.npz"))
        if kind == "enc":  # the class config.json names (WhisperEncoder is not exported at transformers' top level)
            arch = json.load(open(os.path.join(folder, "config.json")))["architectures"][0]
            cls = WhisperEncoder if arch == "WhisperEncoder" else getattr(transformers, arch)
        else:
            cls = {"llm": AutoModelForCausalLM, "clip": CLIPVisionModel, "llava": LlavaForConditionalGeneration}[kind]
        model, info = cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager",
                                          output_loading_info=True)
        model.eval()
        info_all[name] = {k: sorted(map(str, v)) for k, v in info.items() if v} | {"class": type(model).__name__}
        res = {}
        with torch.no_grad():
            if kind == "llm":
                mask = z["mask"]
                pos = np.where(mask == 0, 1, np.cumsum(mask, 1) - 1)
                res["logits"] = model(torch.tensor(z["ids"]).long(), attention_mask=torch.tensor(mask),
                                      position_ids=torch.tensor(pos)).logits.numpy()
            elif kind == "enc":
                kw = {}
                if "in_px" in z:
                    kw["pixel_values"] = torch.tensor(z["in_px"].transpose(0, 3, 1, 2))
                if "in_ids" in z:
                    kw.update(input_ids=torch.tensor(z["in_ids"]).long(), attention_mask=torch.tensor(z["in_mask"]))
                if "in_mel" in z:
                    kw["input_features"] = torch.tensor(z["in_mel"].transpose(0, 2, 1))
                r = model(**kw)
                for k in ("last_hidden_state", "pooler_output", "image_embeds", "text_embeds"):
                    if getattr(r, k, None) is not None:
                        res[k] = r[k].numpy()
            elif kind == "clip":
                r = model(pixel_values=torch.tensor(z["px"].transpose(0, 3, 1, 2)))
                res["last"], res["pooled"] = r.last_hidden_state.numpy(), r.pooler_output.numpy()
            else:
                r = model(input_ids=torch.tensor(z["hf_ids"]).long(),
                          pixel_values=torch.tensor(z["img"].transpose(0, 3, 1, 2)))
                res["logits"] = r.logits.numpy()
                res["text"] = model(input_ids=torch.tensor(z["ids"][:, 2:]).long()).logits.numpy()
        np.savez(os.path.join(folder, "hf.npz"), **res)
    with open(os.path.join(out, "hf_info.json"), "w") as f:
        json.dump(info_all, f, indent=1)


def compare(out):
    cases = json.load(open(os.path.join(out, "cases.json")))
    info = json.load(open(os.path.join(out, "hf_info.json")))
    print(f"transformers {info['transformers']}, torch {info['torch']}\n")
    print("| folder | transformers class | files | loading issues | compared | max abs diff | max abs value |")
    print("|---|---|---|---|---|---|---|")
    worst, ok = 0.0, True
    for name, kind in cases.items():
        folder = os.path.join(out, name)
        z, h = np.load(os.path.join(folder, "jaxmm.npz")), np.load(os.path.join(folder, "hf.npz"))
        issues = {k: v for k, v in info[name].items() if k != "class"}
        ok &= not issues
        files = len([f for f in os.listdir(folder) if f.endswith(".safetensors")])
        rows = []
        if kind == "llm":
            real = z["mask"].astype(bool)
            rows.append(("logits (real tokens)", np.abs(z["logits"] - h["logits"])[real].max(), np.abs(h["logits"]).max()))
        elif kind == "enc":  # every output transformers returns (WithProjection classes: no pooler_output)
            for k in ("last_hidden_state", "pooler_output", "image_embeds", "text_embeds"):
                if k not in h:
                    continue
                if f"out_{k}" not in z:  # jaxmm lacks an output transformers gives: a failure
                    ok = False
                    rows.append((f"{k} (missing in jaxmm)", np.inf, 0.0))
                    continue
                a, b = z[f"out_{k}"], h[k]
                if "in_mask" in z and k == "last_hidden_state":  # padded positions are not compared
                    real = z["in_mask"].astype(bool)
                    a, b = a[real], b[real]
                rows.append((k, np.abs(a - b).max(), np.abs(b).max()))
        elif kind == "clip":
            rows.append(("last_hidden_state", np.abs(z["last"] - h["last"]).max(), np.abs(h["last"]).max()))
            rows.append(("pooler_output", np.abs(z["pooled"] - h["pooled"]).max(), np.abs(h["pooled"]).max()))
        else:
            n = int(z["n"])
            back = []
            for r in z["ids"]:  # jaxmm position t -> HF position (placeholder = the last image token)
                p = list(r).index(7)
                back.append([t if t < p else t + n - 1 for t in range(len(r))])
            hf = np.take_along_axis(h["logits"], np.array(back)[..., None], axis=1)
            rows.append(("text + image logits", np.abs(z["logits"] - hf).max(), np.abs(hf).max()))
            rows.append(("language model, text only", np.abs(z["text"] - h["text"]).max(), np.abs(h["text"]).max()))
        for what, err, scale in rows:
            worst = max(worst, float(err))
            print(f"| {name} | {info[name]['class']} | {files} | {issues or 'none'} | {what} | {err:.1e} | {scale:.1f} |")
    ok &= worst < TOL
    print(f"\nworst max abs difference: {worst:.2e} (tolerance {TOL}); loading issues: "
          f"{'none' if ok or worst >= TOL else 'some'}: {'PASS' if ok else 'FAIL'}")
    return ok


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/jaxmm_export_parity")
    ap.add_argument("--ref-python", help="python of the side environment with torch + transformers")
    ap.add_argument("--hf", action="store_true", help="(internal) load the folders with transformers")
    ap.add_argument("--compare-only", action="store_true", help="(debug) redo step 3 on an existing --dir")
    args = ap.parse_args()
    if args.hf:
        run_hf(args.dir)
        sys.exit(0)
    if args.compare_only:
        sys.exit(0 if compare(args.dir) else 1)
    if os.path.isdir(args.dir):
        shutil.rmtree(args.dir)
    os.makedirs(args.dir)
    build(args.dir)
    if not args.ref_python:
        sys.exit("--ref-python is needed for step 2")
    subprocess.run([args.ref_python, os.path.abspath(__file__), "--hf", "--dir", args.dir], check=True)
    sys.exit(0 if compare(args.dir) else 1)
