"""HF Whisper encoder (`WhisperForConditionalGeneration` / `WhisperModel`: the encoder half) ->
jaxmm.models.audio.AudioEncoder.

Name map (HF -> jaxmm), under `model.encoder.` (WhisperForConditionalGeneration), `encoder.` (WhisperModel) or no
prefix (transformers' WhisperEncoder, what jaxmm.hf.save_pretrained writes):
  conv1 / conv2 .weight [D, C, 3] / .bias        -> conv1 / conv2 kernel [3, C, D] / bias
  embed_positions.weight [max_source_positions, D] -> (not a param: checked to be Whisper's fixed sinusoids,
                                                    which transformers never trains; a checkpoint with other
                                                    values is refused)
  layers.i.self_attn_layer_norm / final_layer_norm -> encoder/layers_i/attn_norm / mlp_norm
  layers.i.self_attn.{q,k,v,out}_proj (no k bias)  -> encoder/layers_i/attn/{q,k,v,o}
  layers.i.fc1 / fc2                               -> encoder/layers_i/mlp/fc1 / fc2
  layer_norm                                       -> final_norm
The decoder (`model.decoder.*`, `decoder.*`) and `proj_out.weight` are read and dropped. HF's input_features are
[B, n_mels, frames]; jaxmm's mel is [B, frames, n_mels] (transpose). HF requires frames = 2·max_source_positions;
jaxmm accepts up to that (`AudioConfig.max_frames`).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxmm.checks import fail
from jaxmm.models.audio import AudioConfig, AudioEncoder, sinusoids
from jaxmm.models.llm import add_fresh_lora, convert_tensors, param_shapes

WHISPER_ARCHITECTURES = ("WhisperForConditionalGeneration", "WhisperModel", "WhisperEncoder")


def audio_config_from_hf(config: dict, **overrides) -> AudioConfig:
    """AudioConfig of a Whisper config dict (the encoder's settings)."""
    arch = (config.get("architectures") or [None])[0]
    if arch not in WHISPER_ARCHITECTURES:
        fail("config.architectures[0]", f"one of {WHISPER_ARCHITECTURES}", repr(arch))
    act = config.get("activation_function", "gelu")
    if act != "gelu":
        fail("config.activation_function", "'gelu'", repr(act))
    base = dict(n_mels=int(config.get("num_mel_bins", 80)),
                max_frames=2 * int(config.get("max_source_positions", 1500)),
                d_model=int(config.get("d_model", 384)), num_layers=int(config.get("encoder_layers", 4)),
                num_heads=int(config.get("encoder_attention_heads", 6)),
                mlp_dim=int(config.get("encoder_ffn_dim", 1536)), norm_eps=1e-5)  # torch LayerNorm's default
    base.update(overrides)
    return AudioConfig(**base)


def _name_map(cfg: AudioConfig, prefix: str) -> dict:
    m = {}
    for conv in ("conv1", "conv2"):
        m[f"{prefix}{conv}.weight"] = ((conv, "kernel"), "")  # transposed to [k, in, out] by from_hf
        m[f"{prefix}{conv}.bias"] = ((conv, "bias"), "")
    m[f"{prefix}layer_norm.weight"] = (("final_norm", "scale"), "")
    m[f"{prefix}layer_norm.bias"] = (("final_norm", "bias"), "")
    for i in range(cfg.num_layers):
        hf, jx = f"{prefix}layers.{i}.", ("encoder", f"layers_{i}")
        for h, j in (("self_attn_layer_norm", "attn_norm"), ("final_layer_norm", "mlp_norm")):
            m[hf + h + ".weight"] = ((*jx, j, "scale"), "")
            m[hf + h + ".bias"] = ((*jx, j, "bias"), "")
        for h, j in (("self_attn.q_proj", ("attn", "q")), ("self_attn.k_proj", ("attn", "k")),
                     ("self_attn.v_proj", ("attn", "v")), ("self_attn.out_proj", ("attn", "o")),
                     ("fc1", ("mlp", "fc1")), ("fc2", ("mlp", "fc2"))):
            m[hf + h + ".weight"] = ((*jx, *j, "kernel"), "T")
            if h != "self_attn.k_proj":
                m[hf + h + ".bias"] = ((*jx, *j, "bias"), "")
    return m


def from_hf(config: dict, tensors: dict, dtype=jnp.float32, **overrides) -> tuple[AudioEncoder, dict]:
    """(AudioEncoder, params) from a Whisper config dict and its tensors {name: np.ndarray}.
    `AudioEncoder.apply({"params": params}, mel)` with mel [B, frames, n_mels] gives HF's encoder
    last_hidden_state. Raises ValueError listing unmapped / missing tensors, or when `embed_positions` is not
    Whisper's sinusoids."""
    cfg = audio_config_from_hf(config, **overrides)
    prefixes = ("",) if config["architectures"][0] == "WhisperEncoder" else ("model.encoder.", "encoder.")
    prefix = next((p for p in prefixes if any(n.startswith(p) for n in tensors)), None)
    if prefix is None:
        fail("tensors", "Whisper encoder tensors under 'model.encoder.' or 'encoder.'", f"{sorted(tensors)[:5]}...")
    tensors = dict(tensors)
    pos = tensors.pop(f"{prefix}embed_positions.weight", None)
    if pos is not None:
        want = sinusoids(pos.shape[0], pos.shape[1])
        err = float(np.max(np.abs(np.asarray(pos, np.float32) - want)))
        if err > 1e-3:
            fail(f"tensors['{prefix}embed_positions.weight']", "Whisper's fixed sinusoids (jaxmm does not learn "
                 "encoder positions)", f"values {err:.3g} away from them")
    for conv in ("conv1", "conv2"):
        w = tensors.get(f"{prefix}{conv}.weight")
        if w is not None:
            tensors[f"{prefix}{conv}.weight"] = np.asarray(w).transpose(2, 1, 0)  # [out, in, k] -> [k, in, out]
    model = AudioEncoder(cfg)
    shapes = param_shapes(model, jnp.zeros((1, cfg.max_frames, cfg.n_mels), jnp.float32))
    dropped = lambda n: not n.startswith(prefix) or n.endswith("embed_positions.weight")  # noqa: E731
    params = convert_tensors(_name_map(cfg, prefix), tensors, ignore=dropped, expected_shapes=shapes, dtype=dtype)
    return model, add_fresh_lora(params, shapes, dtype=dtype)
