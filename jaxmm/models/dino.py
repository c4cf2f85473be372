"""DINOv2's ViT (Oquab et al. 2023) and DINO self-distillation (Caron et al. 2021): the subject encoder of Toffee.

    model = DinoViT(DinoConfig(image_size=32, patch_size=8, d_model=64, num_layers=2, num_heads=4))
    out = model.apply({"params": p}, images)     # images [B, H, W, C] NHWC, normalised
    out["last_hidden_state"] [B, 1+N, D] (final LayerNorm on every token), out["pooler_output"] [B, D] (= its CLS),
    out["patch_tokens"] [B, N, D] (what Toffee's models are conditioned on), out["hidden_states"] (1 + num_layers)

Architecture (HF `Dinov2Model`, `use_swiglu_ffn=False`): patch conv (bias) -> [CLS] + patches + learned positions
(bicubically resized when the grid differs, e.g. DINO's small local crops: jax.image.resize's Keys cubic, NOT
torch's a=-0.75 kernel, so only same-size inputs match HF exactly) -> pre-norm blocks x = x + γ₁·Attn(LN(x)),
x = x + γ₂·MLP(LN(x)) (LayerScale γ, exact-GELU MLP of width mlp_ratio·D, biases everywhere) -> final LayerNorm.
`jaxmm.hf.dinov2` loads HF checkpoints into it.

Self-distillation (DINO §3.1; the loss maths here are pure functions):
  `DinoHead`: 3-layer GELU MLP -> bottleneck -> L2 normalise -> linear onto K prototypes (weight-normalised rows);
  `dino_loss`: the student's softmax(s/τ_s) against the teacher's centred, sharpened softmax((t - c)/τ_t), over
    every (teacher global crop, student crop) pair that are different views;
  `update_center`: c ← m·c + (1-m)·mean(teacher outputs); `ema`: teacher ← m·teacher + (1-m)·student;
  `multi_crop`: random resized crops (2 global at full size, n local at a small size), flips and brightness jitter.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmm import attention
from jaxmm.checks import check_rank, fail
from jaxmm.nn.layers import Dense, LayerNorm, default_init


@dataclasses.dataclass(frozen=True)
class DinoConfig:
    image_size: int = 32
    patch_size: int = 8
    num_channels: int = 3
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    layerscale_value: float = 1.0
    qkv_bias: bool = True
    dtype: object = None

    def __post_init__(self):
        if self.d_model % self.num_heads:
            fail("DinoConfig.d_model", f"a multiple of num_heads={self.num_heads}", self.d_model)
        if self.image_size % self.patch_size:
            fail("DinoConfig.image_size", f"a multiple of patch_size={self.patch_size}", self.image_size)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def mlp_dim(self) -> int:
        return int(self.d_model * self.mlp_ratio)


class DinoBlock(nn.Module):
    config: DinoConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        b, n, d = x.shape
        h = cfg.num_heads
        dense = lambda f, name, bias=True: Dense(f, use_bias=bias, axes=("embed", "heads"), dtype=cfg.dtype,  # noqa: E731
                                                 name=name)
        y = LayerNorm(cfg.norm_eps, name="norm1")(x)
        q, k, v = (dense(d, name, cfg.qkv_bias)(y).reshape(b, n, h, d // h) for name in ("q", "k", "v"))
        y = dense(d, "o")(attention.dot_product_attention(q, k, v).reshape(b, n, d))
        g1 = self.param("layer_scale1", nn.initializers.constant(cfg.layerscale_value), (d,))
        x = x + g1 * y
        y = LayerNorm(cfg.norm_eps, name="norm2")(x)
        y = Dense(cfg.mlp_dim, use_bias=True, axes=("embed", "mlp"), dtype=cfg.dtype, name="fc1")(y)
        y = Dense(d, use_bias=True, axes=("mlp", "embed"), dtype=cfg.dtype, name="fc2")(nn.gelu(y, approximate=False))
        g2 = self.param("layer_scale2", nn.initializers.constant(cfg.layerscale_value), (d,))
        return x + g2 * y


def resize_positions(pos, grid: int, new_grid: int):
    """[1 + grid², D] positions (CLS first) -> [1 + new_grid², D], bicubic on the patch grid (cubic of
    jax.image.resize; torch's bicubic uses a = -0.75, so resized grids do not match HF bit for bit)."""
    if new_grid == grid:
        return pos
    d = pos.shape[-1]
    patch = jax.image.resize(pos[1:].reshape(grid, grid, d), (new_grid, new_grid, d), "cubic")
    return jnp.concatenate([pos[:1], patch.reshape(-1, d)], 0)


class DinoViT(nn.Module):
    """images [B, H, W, C] (H = W, a multiple of patch_size; other sizes than image_size resize the positions)."""
    config: DinoConfig

    @nn.compact
    def __call__(self, images):
        cfg = self.config
        check_rank("images", images, 4, "[B, H, W, C] (NHWC)")
        b, hh, ww, c = images.shape
        if hh != ww or hh % cfg.patch_size or c != cfg.num_channels:
            fail("images", f"square NHWC images, side a multiple of {cfg.patch_size}, {cfg.num_channels} channels",
                 f"shape {images.shape}")
        x = nn.Conv(cfg.d_model, (cfg.patch_size,) * 2, strides=(cfg.patch_size,) * 2, padding="VALID",
                    dtype=cfg.dtype, name="patch_embed")(images)
        x = x.reshape(b, -1, cfg.d_model)
        cls = self.param("cls_token", default_init, (cfg.d_model,))
        pos = self.param("position_embedding", default_init, (1 + cfg.grid ** 2, cfg.d_model))
        self.param("mask_token", nn.initializers.zeros, (cfg.d_model,))  # HF's (iBOT masking); unused here
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, cfg.d_model)), x], 1)
        x = x + resize_positions(pos, cfg.grid, hh // cfg.patch_size).astype(x.dtype)
        hidden = [x]
        for i in range(cfg.num_layers):
            x = DinoBlock(cfg, name=f"layers_{i}")(x)
            hidden.append(x)
        x = LayerNorm(cfg.norm_eps, name="norm")(x)
        return {"last_hidden_state": x, "pooler_output": x[:, 0], "patch_tokens": x[:, 1:], "hidden_states": hidden}


class DinoHead(nn.Module):
    """DINO's projection head: x [.., D] -> [.., num_prototypes] logits (before the temperature)."""
    num_prototypes: int = 256
    hidden: int = 256
    bottleneck: int = 64

    @nn.compact
    def __call__(self, x):
        for i in range(2):
            x = nn.gelu(nn.Dense(self.hidden, name=f"mlp_{i}")(x), approximate=False)
        x = nn.Dense(self.bottleneck, name="mlp_2")(x)
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
        w = self.param("prototypes", nn.initializers.normal(1.0), (self.bottleneck, self.num_prototypes))
        return x @ (w / jnp.linalg.norm(w, axis=0, keepdims=True))   # weight norm with g = 1 (DINO's default)


class DinoStudent(nn.Module):
    """Backbone + head: images -> (head logits [B, K], backbone outputs). Student and teacher share this module."""
    config: DinoConfig
    num_prototypes: int = 256

    @nn.compact
    def __call__(self, images):
        out = DinoViT(self.config, name="backbone")(images)
        return DinoHead(self.num_prototypes, name="head")(out["pooler_output"]), out


# ----------------------------------------------------------------------------------------------- self-distillation
def dino_loss(student_logits, teacher_logits, center, *, student_temp: float = 0.1, teacher_temp: float = 0.04):
    """DINO's cross-view loss. student_logits [Vs, B, K] (the 2 global crops first, then the local crops),
    teacher_logits [Vt, B, K] (the global crops; Vt <= Vs), center [K]. Mean over the pairs with v_t != v_s of
    mean_b H(softmax((t - c)/τ_t), softmax(s/τ_s)); the teacher side is stop-gradient."""
    check_rank("student_logits", student_logits, 3, "[views, B, K]")
    check_rank("teacher_logits", teacher_logits, 3, "[views, B, K]")
    if teacher_logits.shape[0] > student_logits.shape[0] or teacher_logits.shape[1:] != student_logits.shape[1:]:
        fail("teacher_logits", f"[Vt <= {student_logits.shape[0]}, {student_logits.shape[1]}, "
             f"{student_logits.shape[2]}]", f"shape {teacher_logits.shape}")
    return cross_view_loss(student_logits, jax.nn.softmax((teacher_logits - center) / teacher_temp, -1),
                           student_temp=student_temp)


def cross_view_loss(student_logits, teacher_probs, *, student_temp: float = 0.1):
    """Mean over the (teacher view v_t, student view v_s) pairs with v_t != v_s of mean_b
    H(teacher_probs[v_t, b], softmax(student_logits[v_s, b] / τ_s)). student_logits [Vs, B, K], teacher_probs
    [Vt, B, K] (rows sum to 1, Vt <= Vs; the first Vt student views are the teacher's views); no gradient reaches
    teacher_probs."""
    t = jax.lax.stop_gradient(teacher_probs)
    logp = jax.nn.log_softmax(student_logits / student_temp, -1)
    ce = -jnp.einsum("tbk,sbk->tsb", t, logp).mean(-1)                     # [Vt, Vs]
    vt, vs = teacher_probs.shape[0], student_logits.shape[0]
    off = 1.0 - jnp.eye(vt, vs)
    return (ce * off).sum() / off.sum()


def sinkhorn_knopp(teacher_logits, *, teacher_temp: float = 0.04, iterations: int = 3):
    """DINOv2's teacher targets (its replacement of centring): Q = exp(logits / τ_t) over one view's batch
    [B, K] (or [V, B, K], each view alone), alternately normalised so every prototype gets mass 1/K and every
    sample 1/B, `iterations` times; returns B·Q, rows summing to 1. The equal prototype mass is what stops both
    collapses (one prototype for all samples, or the uniform) without a running centre."""
    if teacher_logits.ndim == 3:
        return jax.vmap(lambda t: sinkhorn_knopp(t, teacher_temp=teacher_temp, iterations=iterations))(
            teacher_logits)
    check_rank("teacher_logits", teacher_logits, 2, "[B, K] or [views, B, K]")
    b, k = teacher_logits.shape
    z = teacher_logits / teacher_temp
    q = jnp.exp(z - z.max())
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(0, keepdims=True) / k     # each prototype: 1/K
        q = q / q.sum(1, keepdims=True) / b     # each sample: 1/B
    return q * b


def koleo_loss(features, eps: float = 1e-8):
    """DINOv2's KoLeo regulariser (Sablayrolles et al. 2019) on a batch [B, D]: -mean_i log(min_{j != i}
    ||x̂_i - x̂_j|| + eps) of the L2-normalised features x̂; it grows as two samples' features approach, so it
    spreads the batch over the sphere (against the collapse of all images onto one feature)."""
    check_rank("features", features, 2, "[B, D]")
    x = features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12)
    d2 = jnp.sum((x[:, None] - x[None]) ** 2, -1) + jnp.where(jnp.eye(x.shape[0], dtype=bool), jnp.inf, 0.0)
    return -jnp.mean(jnp.log(jnp.sqrt(jnp.maximum(jnp.min(d2, 1), 1e-12)) + eps))


def update_center(center, teacher_logits, momentum: float = 0.9):
    """c ← m c + (1 - m) mean over views and batch of the teacher logits (DINO's centring, stops collapse to one
    prototype; sharpening by τ_t stops collapse to the uniform)."""
    return momentum * center + (1 - momentum) * teacher_logits.reshape(-1, teacher_logits.shape[-1]).mean(0)


def ema(teacher, student, momentum):
    """teacher ← m·teacher + (1 - m)·student, leaf by leaf."""
    return jax.tree.map(lambda t, s: momentum * t + (1 - momentum) * s, teacher, student)


def _crop(image, key, out_size: int, scale: tuple, aspect: tuple = (3 / 4, 4 / 3)):
    """One random resized crop (area fraction in `scale`, aspect ratio in `aspect`) of image [H, W, C], flipped at
    random (p = 1/2), bilinear."""
    h = image.shape[0]
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    area = jax.random.uniform(k1, (), minval=scale[0], maxval=scale[1])
    aspect = jnp.exp(jax.random.uniform(k2, (), minval=jnp.log(aspect[0]), maxval=jnp.log(aspect[1])))
    ch = jnp.clip(jnp.sqrt(area * aspect), 0.1, 1.0) * h
    cw = jnp.clip(jnp.sqrt(area / aspect), 0.1, 1.0) * h
    y0 = jax.random.uniform(k3, ()) * (h - ch)
    x0 = jax.random.uniform(k4, ()) * (h - cw)
    sy, sx = out_size / ch, out_size / cw
    out = jax.image.scale_and_translate(image, (out_size, out_size, image.shape[-1]), (0, 1),
                                        jnp.stack([sy, sx]), jnp.stack([-y0 * sy, -x0 * sx]), "linear")
    return jnp.where(jax.random.bernoulli(k5), out[:, ::-1], out)


def multi_crop(key, images, *, num_local: int = 4, local_size: int = 16, global_scale=(0.4, 1.0),
               local_scale=(0.1, 0.4), jitter: float = 0.2):
    """DINO's multi-crop. images [B, S, S, C] -> (global [2, B, S, S, C], local [num_local, B, s, s, C]), each
    crop with a random brightness offset in ±jitter (on the normalised scale)."""
    check_rank("images", images, 4, "[B, H, W, C]")
    b, s = images.shape[0], images.shape[1]

    def views(k, n, size, scale):
        keys = jax.random.split(k, (n, b))
        crops = jax.vmap(jax.vmap(lambda kk, im: _crop(im, kk, size, scale), (0, 0)), (0, None))(keys, images)
        shift = jax.random.uniform(jax.random.fold_in(k, 1), (n, b, 1, 1, 1), minval=-jitter, maxval=jitter)
        return crops + shift

    kg, kl = jax.random.split(key)
    return views(kg, 2, s, global_scale), views(kl, num_local, local_size, local_scale)
