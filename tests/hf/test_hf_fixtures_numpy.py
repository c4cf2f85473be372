"""The HF fixtures hold what tests/fixtures/README.md says: a float64 NumPy forward of each model, written from
the architectures' definitions and fed by `jaxmm.hf.io`, reproduces HF's stored outputs.

This pins down the conventions a JAX port must follow (rotate-half RoPE, Llama-3 frequency scaling, position
ids from the padding mask, which hidden state HF stores last, CLIP's pre-LN and CLS pooling) and is a float64
reference to debug a port against. It is also a check that the fixtures were not generated from a wrong model.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from jaxmm.hf.io import load_safetensors, read_config

HF = Path(__file__).resolve().parents[1] / "fixtures" / "hf"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOL = 1e-4  # max abs, float32 HF against float64 NumPy


# ------------------------------------------------------------------- a float64 Llama / Mistral / Qwen2
def rope_inv_freq(cfg: dict) -> np.ndarray:
    """Inverse frequencies, with Llama-3 scaling when configured (either config form)."""
    rope = dict(cfg.get("rope_parameters") or {})
    if cfg.get("rope_scaling"):
        rope.update(cfg["rope_scaling"])
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "llama3":
        factor, lo, hi = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        orig = rope["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        smooth = (orig / wavelen - lo) / (hi - lo)
        mid = (1 - smooth) * inv / factor + smooth * inv
        inv = np.where(wavelen < orig / hi, inv, np.where(wavelen > orig / lo, inv / factor, mid))
    else:
        assert kind == "default", kind
    return inv


def apply_rope(x: np.ndarray, pos: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """x [B, T, heads, hd]; HF's rotate-half convention: pairs (i, i + hd/2)."""
    ang = pos[..., None].astype(np.float64) * inv  # [B, T, hd/2]
    cos, sin = np.cos(ang)[:, :, None], np.sin(ang)[:, :, None]
    x1, x2 = np.split(x, 2, axis=-1)
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def llm_forward(w: dict, cfg: dict, ids: np.ndarray, mask: np.ndarray | None = None,
                pos: np.ndarray | None = None):
    """Returns (logits [B, T, V], hidden states [L + 1, B, T, H] as HF stores them)."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    b, t = ids.shape
    nh, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // nh
    eps = cfg["rms_norm_eps"]
    inv = rope_inv_freq(cfg)
    mask = np.ones((b, t), bool) if mask is None else mask.astype(bool)
    pos = np.broadcast_to(np.arange(t), (b, t)) if pos is None else pos
    allowed = np.tril(np.ones((t, t), bool))[None] & mask[:, None, :]  # [B, Tq, Tk]
    x = w["model.embed_tokens.weight"][ids]
    hidden = [x]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)

        def proj(name, heads):
            y = h @ w[p + f"self_attn.{name}.weight"].T + w.get(p + f"self_attn.{name}.bias", 0.0)
            return y.reshape(b, t, heads, hd)

        q, k, v = apply_rope(proj("q_proj", nh), pos, inv), apply_rope(proj("k_proj", kv), pos, inv), proj("v_proj", kv)
        k, v = np.repeat(k, nh // kv, axis=2), np.repeat(v, nh // kv, axis=2)  # head j uses kv head j // (nh/kv)
        s = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        s = np.where(allowed[:, None], s, -np.inf)
        with np.errstate(invalid="ignore"):  # pad query rows see no key: NaN -> 0 (their outputs are unspecified)
            s = np.exp(s - s.max(-1, keepdims=True))
            s = np.nan_to_num(s / s.sum(-1, keepdims=True))
        a = np.einsum("bhqk,bkhd->bqhd", s, v).reshape(b, t, nh * hd)
        x = x + a @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        g, u = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ w[p + "mlp.down_proj.weight"].T
        hidden.append(x)
    x = rms_norm(x, w["model.norm.weight"], eps)
    hidden[-1] = x  # HF stores the final-normed state last
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x @ head.T, np.stack(hidden)


@pytest.mark.parametrize("name", ["llama_mha", "llama3_gqa_tied", "mistral", "qwen2_tied"])
def test_llm_reference_matches_float64_numpy(name):
    cfg, w = read_config(HF / name), load_safetensors(HF / name)
    ref = np.load(HF / name / "reference.npz")
    logits, hidden = llm_forward(w, cfg, ref["input_ids"])
    assert np.abs(logits - ref["logits"]).max() < TOL
    assert np.abs(hidden - ref["hidden_states"]).max() < TOL
    assert np.abs(hidden[-1] - ref["last_hidden_state"]).max() < TOL
    # left padding: compare real tokens only
    m = ref["padded_attention_mask"].astype(bool)
    assert np.array_equal(ref["padded_position_ids"], np.where(m, np.cumsum(m, -1) - 1, 1))
    logits, hidden = llm_forward(w, cfg, ref["padded_input_ids"], m, ref["padded_position_ids"])
    assert np.abs(logits - ref["padded_logits"])[m].max() < TOL
    assert np.abs(hidden - ref["padded_hidden_states"])[:, m].max() < TOL
    # the padded row equals its unpadded self (positions restart at 0 after the pads)
    n = m[1].sum()
    alone, _ = llm_forward(w, cfg, ref["padded_input_ids"][1:, -n:])
    assert np.abs(alone[0] - ref["padded_logits"][1, -n:]).max() < TOL


@pytest.mark.parametrize("name", ["llama_mha", "llama3_gqa_tied", "mistral", "qwen2_tied"])
def test_llm_greedy_tokens_match_float64_numpy(name):
    cfg, w = read_config(HF / name), load_safetensors(HF / name)
    ref = np.load(HF / name / "reference.npz")
    ids, mask = ref["gen_prompt_ids"], ref["gen_attention_mask"].astype(bool)
    assert ref["gen_eos_token_id"] == -1 and ref["gen_min_top2_margin"] > 1e-2
    for step in range(ref["gen_new_ids"].shape[1]):
        pos = np.where(mask, np.cumsum(mask, -1) - 1, 1)
        logits, _ = llm_forward(w, cfg, ids, mask, pos)
        assert np.abs(logits[:, -1] - ref["gen_step_logits"][:, step]).max() < TOL
        nxt = logits[:, -1].argmax(-1)
        ids = np.concatenate([ids, nxt[:, None]], 1)
        mask = np.concatenate([mask, np.ones((2, 1), bool)], 1)
    assert np.array_equal(ids, ref["gen_sequences"])
    assert np.array_equal(ids[:, -20:], ref["gen_new_ids"])


def test_llama3_scaling_changes_some_frequencies_only():
    cfg = read_config(HF / "llama3_gqa_tied")
    plain = dict(cfg, rope_scaling=None)
    changed = ~np.isclose(rope_inv_freq(cfg), rope_inv_freq(plain), rtol=1e-12)
    assert changed.any() and not changed.all()


# ------------------------------------------------------------------- a float64 CLIP vision tower
def layer_norm(x, g, b, eps=1e-5):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * g + b


def clip_vision_forward(w: dict, vc: dict, pixels_nhwc: np.ndarray, prefix: str):
    w = {k[len(prefix):]: v.astype(np.float64) for k, v in w.items() if k.startswith(prefix)}
    b, size, _, c = pixels_nhwc.shape
    p, hsz, nh = vc["patch_size"], vc["hidden_size"], vc["num_attention_heads"]
    g = size // p
    patches = pixels_nhwc.astype(np.float64).reshape(b, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(b, g * g, p, p, c)
    x = np.einsum("bnhwc,ochw->bno", patches, w["embeddings.patch_embedding.weight"])
    cls = np.broadcast_to(w["embeddings.class_embedding"], (b, 1, hsz))
    x = np.concatenate([cls, x], 1) + w["embeddings.position_embedding.weight"]
    x = layer_norm(x, w["pre_layrnorm.weight"], w["pre_layrnorm.bias"])
    hidden, hd, t = [x], hsz // nh, x.shape[1]
    for i in range(vc["num_hidden_layers"]):
        q = f"encoder.layers.{i}."
        h = layer_norm(x, w[q + "layer_norm1.weight"], w[q + "layer_norm1.bias"])
        lin = lambda n, y: y @ w[q + n + ".weight"].T + w[q + n + ".bias"]  # noqa: E731
        qs, ks, vs = (lin(f"self_attn.{n}", h).reshape(b, t, nh, hd) for n in ("q_proj", "k_proj", "v_proj"))
        s = np.einsum("bqhd,bkhd->bhqk", qs, ks) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        x = x + lin("self_attn.out_proj", np.einsum("bhqk,bkhd->bqhd", s, vs).reshape(b, t, hsz))
        h = lin("mlp.fc1", layer_norm(x, w[q + "layer_norm2.weight"], w[q + "layer_norm2.bias"]))
        x = x + lin("mlp.fc2", h / (1 + np.exp(-1.702 * h)))  # quick_gelu
        hidden.append(x)
    pooled = layer_norm(x[:, 0], w["post_layernorm.weight"], w["post_layernorm.bias"])
    return x, pooled, np.stack(hidden)


@pytest.mark.parametrize("name", ["clip_vision", "clip_full"])
def test_clip_reference_matches_float64_numpy(name):
    cfg, w = read_config(HF / name), load_safetensors(HF / name)
    ref = np.load(HF / name / "reference.npz")
    vc, prefix = (cfg["vision_config"], "vision_model.") if "vision_config" in cfg else (cfg, "")
    last, pooled, hidden = clip_vision_forward(w, vc, ref["pixel_values"], prefix)
    assert np.abs(last - ref["last_hidden_state"]).max() < TOL
    assert np.abs(pooled - ref["pooler_output"]).max() < TOL
    assert np.abs(hidden - ref["hidden_states"]).max() < TOL
    if "image_embeds" in ref:
        embeds = pooled @ w["visual_projection.weight"].astype(np.float64).T
        assert np.abs(embeds - ref["image_embeds"]).max() < TOL


# ------------------------------------------------------------------- Whisper log-mel
def test_whisper_logmel_matches_documented_recipe():
    ref = np.load(FIXTURES / "whisper_logmel.npz")
    n_fft, hop = 400, 160
    wave = np.zeros(16000)
    wave[: ref["waveform"].size] = ref["waveform"]
    padded = np.pad(wave, n_fft // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # [101, 201]
    mel = ref["mel_filters"].astype(np.float64).T @ power[:-1].T  # [80, 100]
    log = np.log10(np.maximum(mel, 1e-10))
    log = (np.maximum(log, log.max() - 8.0) + 4.0) / 4.0
    assert np.abs(log - ref["log_mel_1s"]).max() < 1e-3
    assert np.abs(ref["log_mel_30s_first_100"] - ref["log_mel_1s"]).max() < 1e-3  # the signal ends at 0.75 s
