"""Issue 14: the attention dispatch is right per target, proved from a CPU machine.

* TPU: the README's Block, the ViT, the LLM (with and without a mask), the Whisper-style audio encoder, the demo's
  model (MLLM loss + gradient + AdamW update: the model half of the demo's train step) and every attention kind are
  lowered for TPU, forward and backward (`.lower(lowering_platforms=("tpu",))`: Mosaic TPU lowers the Pallas
  kernels here, so a kernel that cannot compile on TPU fails this test).
* CUDA: jaxmm's Pallas kernels (flash, NTK, tensor) lowered through the Triton lowering for an abstract H100.
  cuDNN cannot be lowered without its library (it is probed at trace time), so on a CPU machine the CUDA
  branch of the automatic choice is XLA for softmax/NTK attention; tests/models/test_llm.py covers the float32
  rule with cuDNN reported available.
* The TPU kernel that the dispatch uses (JAX's Pallas TPU flash attention) runs on CPU in TPU interpret mode
  against the reference maths, values and gradients.
"""
from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import AbstractDevice, AbstractMesh, AxisType

import jaxmm.nn  # noqa: F401  (registers the attention kinds of nn)
import jaxmm.privacy.layers  # noqa: F401  (registers the kind "dp")
from jaxmm import attention as A
from jaxmm.attention import dispatch
from jaxmm.models.audio import AudioConfig, AudioEncoder
from jaxmm.models.llm import LLM, LLMConfig
from jaxmm.models.mllm import MLLM, MLLMConfig, mllm_loss
from jaxmm.models.vit import ViT, ViTConfig
from jaxmm.nn import Block, BlockConfig
from jaxmm.ops import attention as ref_ops

TPU_KERNEL = "tpu_custom_call"       # how a Pallas (Mosaic) kernel appears in TPU StableHLO
TRITON_KERNEL = "triton"             # ... and a Pallas Triton kernel in CUDA StableHLO


def lowered_text(fn, *args, platform: str) -> str:
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def fwd_bwd(apply):
    """A scalar loss of `apply(params, *inputs)` and its gradient w.r.t. the params and float inputs."""
    def step(params, *inputs):
        loss = lambda p, *xs: jnp.sum(apply(p, *xs).astype(jnp.float32) ** 2)
        argnums = tuple(i for i, x in enumerate((params,) + inputs) if i == 0 or jnp.issubdtype(x.dtype, jnp.floating))
        return jax.value_and_grad(loss, argnums=argnums)(params, *inputs)
    return step


# --------------------------------------------------------------------------------------------------- TPU
def test_readme_block_lowers_for_tpu():
    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    model, params = ns["MyModel"](), ns["params"]
    for length in (16, 128):   # 128: the TPU flash kernel's shapes; 16: the XLA path on TPU
        x = jnp.ones((2, length, 64))
        hlo = lowered_text(fwd_bwd(model.apply), params, x, platform="tpu")
        assert (TPU_KERNEL in hlo) == (length == 128)


def test_vit_lowers_for_tpu():
    cfg = ViTConfig(image_size=32, patch_size=4, d_model=64, num_layers=2, num_heads=4, mlp_dim=128)
    img = jnp.zeros((2, 32, 32, 3))
    params = ViT(cfg).init(jax.random.key(0), img)
    lowered_text(fwd_bwd(lambda p, x: ViT(cfg).apply(p, x)["last_hidden_state"]), params, img, platform="tpu")


@pytest.mark.parametrize("with_mask", [False, True])
def test_llm_lowers_for_tpu(with_mask):
    cfg = LLMConfig(vocab_size=64, num_layers=2, d_model=64, num_heads=4, num_kv_heads=2, mlp_dim=128)
    ids = jnp.zeros((2, 128), jnp.int32)
    mask = jnp.ones((2, 128), jnp.int32).at[0, :5].set(0) if with_mask else None
    params = LLM(cfg).init(jax.random.key(0), ids)
    hlo = lowered_text(fwd_bwd(lambda p, i: LLM(cfg).apply(p, i, attention_mask=mask)), params, ids,
                       platform="tpu")
    assert (TPU_KERNEL in hlo) == (not with_mask)   # the kernel without a mask, XLA with one


def test_scanned_llm_with_remat_policy_lowers_for_tpu():
    """The deep-LLM configuration (issue 14.7): blocks in one nn.scan, each rematerialised under a policy, bf16
    params; the Pallas TPU kernel inside the scanned body, forward and backward."""
    cfg = LLMConfig(vocab_size=64, num_layers=4, d_model=64, num_heads=4, num_kv_heads=2, mlp_dim=128,
                    scan_layers=True, remat_policy="dots_with_no_batch_dims_saveable", param_dtype=jnp.bfloat16,
                    dtype=jnp.bfloat16)
    ids = jnp.zeros((2, 128), jnp.int32)
    params = LLM(cfg).init(jax.random.key(0), ids)
    hlo = lowered_text(fwd_bwd(lambda p, i: LLM(cfg).apply(p, i)), params, ids, platform="tpu")
    assert TPU_KERNEL in hlo
    assert hlo.count("stablehlo.while") >= 2  # one loop over the layers each way (the unrolled model has none)


def test_whisper_encoder_lowers_for_tpu():
    cfg = AudioConfig(n_mels=16, max_frames=64, d_model=64, num_layers=2, num_heads=4, mlp_dim=128)
    mel = jnp.zeros((2, 64, 16))
    params = AudioEncoder(cfg).init(jax.random.key(0), mel)
    lowered_text(fwd_bwd(lambda p, m: AudioEncoder(cfg).apply(p, m)["features"]), params, mel, platform="tpu")


def test_demo_model_train_step_lowers_for_tpu():
    """The demo's model (configs/demo.py: ViT 32 px / patch 4, width 64, 2 layers; 2-layer GQA LLM, width 64;
    56 text tokens) through loss, gradient and an AdamW update. The trainer's own step (train/loop.py) adds
    sharding and bookkeeping around exactly this computation."""
    vit = ViTConfig(image_size=32, patch_size=4, d_model=64, num_layers=2, num_heads=4, mlp_dim=128)
    llm = LLMConfig(vocab_size=300, num_layers=2, d_model=64, num_heads=4, num_kv_heads=2, mlp_dim=128)
    model = MLLM(MLLMConfig(llm=llm, placeholder_id=299, encoder_config=vit))
    ids = jnp.zeros((2, 56), jnp.int32).at[:, 3].set(299)
    batch = {"input_ids": ids, "attention_mask": jnp.ones_like(ids), "loss_mask": jnp.ones_like(ids),
             "image": jnp.zeros((2, 32, 32, 3))}
    params = model.init(jax.random.key(0), ids, batch["image"], batch["attention_mask"])["params"]
    opt = optax.adamw(1e-3)

    def train_step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda p: mllm_loss(model, p, batch)[0])(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    lowered_text(train_step, params, opt.init(params), batch, platform="tpu")


KINDS = [("softmax", {}, 16), ("softmax", {}, 128), ("prefix", {"length": 4}, 16), ("ntk", {"init": "normal"}, 16),
         ("tensor", {}, 16), ("tensor", {"method": "poly", "degree": 2}, 16), ("dp", {"epsilon": 2.0}, 16)]


@pytest.mark.parametrize("kind,args,length", KINDS, ids=[f"{k}{a.get('method', '')}-{n}" for k, a, n in KINDS])
def test_every_attention_kind_lowers_for_tpu(kind, args, length):
    """Forward and backward, with and without a key-padding mask, causal (softmax at length 128: the kernel)."""
    cfg = BlockConfig(d_model=64, num_heads=4, num_kv_heads=2 if kind not in ("tensor", "dp") else None, mlp_dim=128,
                      attention=kind, attention_args=args)
    x = jnp.ones((2, length, 64))
    rngs = {"dp": jax.random.key(1)}    # the DP release's noise (kind "dp")
    params = Block(cfg).init({"params": jax.random.key(0), **rngs}, x)
    mask = jnp.ones((2, length), bool).at[0, :3].set(False)   # key padding
    for m in ((None,) if kind == "dp" else (None, mask)):      # "dp": one release over all tokens, no mask
        apply = lambda p, x: Block(cfg).apply(p, x, mask=m, is_causal=kind != "dp", rngs=rngs)  # noqa: B023
        lowered_text(fwd_bwd(apply), params, x, platform="tpu")


@pytest.mark.parametrize("fn", ["softmax", "ntk", "tensor"])
def test_cpu_lowering_has_no_tpu_kernel(fn):
    q = jnp.ones((1, 128, 2, 32))
    call = {"softmax": lambda q: A.dot_product_attention(q, q, q, is_causal=True),
            "ntk": lambda q: A.ntk_attention(q, q, q, jnp.zeros((2, 32, 32)), jnp.zeros((2, 32)), is_causal=True),
            "tensor": lambda q: A.tensor_attention(q[:, :16], q[:, :16], q[:, :16], q[:, :16], q[:, :16])}[fn]
    assert TPU_KERNEL not in lowered_text(call, q, platform="cpu")
    if fn == "softmax":
        assert TPU_KERNEL in lowered_text(call, q, platform="tpu")


# --------------------------------------------------------------------------------- TPU kernel, interpret mode
@pytest.mark.parametrize("is_causal", [False, True])
def test_tpu_flash_attention_in_tpu_interpret_mode_matches_reference(is_causal):
    ks = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(ks[0], (1, 128, 4, 32))
    k, v = (jax.random.normal(kk, (1, 128, 2, 32)) for kk in ks[1:])    # GQA: 2 kv heads for 4 query heads
    scale = 32 ** -0.5
    loss = lambda f: (lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v))))
    tpu = lambda q, k, v: dispatch.tpu_flash_attention(q, k, v, is_causal=is_causal, scale=scale)
    ref = lambda q, k, v: ref_ops.dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)
    with pltpu.force_tpu_interpret_mode():
        out = tpu(q, k, v)
        grads = jax.grad(loss(tpu), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(out, ref(q, k, v), atol=2e-5)
    for g, r in zip(grads, jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(g, r, atol=5e-5)


# -------------------------------------------------------------------------------------- CUDA (abstract H100)
H100 = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")


def lowered_for_h100(fn, *args) -> str:
    mesh = AbstractMesh((1,), ("x",), (AxisType.Explicit,), abstract_device=H100)
    with jax.sharding.use_abstract_mesh(mesh):
        return lowered_text(fn, *args, platform="cuda")


def _loss_and_grads(f, n):
    return lambda *a: jax.value_and_grad(lambda *b: jnp.sum(f(*b).astype(jnp.float32)), argnums=tuple(range(n)))(*a)


@pytest.mark.parametrize("kernel", ["flash", "ntk", "tensor"])
def test_pallas_kernels_lower_for_cuda_h100(kernel):
    q = jnp.ones((1, 128, 2, 64), jnp.bfloat16)
    z, kvec = jnp.zeros((2, 64, 64)), jnp.zeros((2, 64))
    fns = {
        "flash": (lambda q, k, v: A.dot_product_attention(q, k, v, is_causal=True, implementation="pallas"), 3),
        "ntk": (lambda q, k, v: A.ntk_attention(q, k, v, z, kvec, is_causal=True, implementation="pallas"), 3),
        "tensor": (lambda q, k, v: A.tensor_attention(q, k, v, k, v, is_causal=True, implementation="pallas"), 3),
    }
    f, n = fns[kernel]
    hlo = lowered_for_h100(_loss_and_grads(f, n), q, q, q)
    assert TRITON_KERNEL in hlo and TPU_KERNEL not in hlo


def test_automatic_choice_on_cuda_without_cudnn_library():
    """Tensor attention takes jaxmm's Pallas kernel on CUDA by default; softmax/NTK fall back to XLA when cuDNN
    is not there to trace (as on this CPU machine)."""
    assert not dispatch.cudnn_available()
    q = jnp.ones((1, 64, 2, 32), jnp.bfloat16)
    tensor = lowered_for_h100(_loss_and_grads(lambda q: A.tensor_attention(q, q, q, q, q), 1), q)
    assert TRITON_KERNEL in tensor
    softmax = lowered_for_h100(_loss_and_grads(lambda q: A.dot_product_attention(q, q, q, is_causal=True), 1), q)
    assert TRITON_KERNEL not in softmax and "cudnn" not in softmax.lower()
