"""The same tiny UNet in jaxmm (JAX, CPU) and diffusers (torch, CPU): training-step and sampling throughput in one
run, as a ratio; and the memory of a Stable-Diffusion-1.5-sized UNet training step on a 512-px image's latent
(64x64x4) from XLA's compiled memory analysis (issue 17; docs/results/diffusion.md).

    python bench/diffusion_throughput.py                       # both parts (the memory part compiles SD-1.5's UNet)
    python bench/diffusion_throughput.py --skip_memory --steps 5
    python bench/diffusion_throughput.py --peer /path/to/python   # torch + diffusers interpreter

Throughput: `--batch` 32x32x4 latents, context 8x32, ε-MSE loss + Adam step (jaxmm: one jitted step; torch:
loss.backward + torch.optim.Adam), and sampling = one UNet forward per example per step (a 10-step DDIM run's
cost is 10 of these). Both with the machine's threads; the peer runs as a subprocess of the side interpreter
(default /work/ref/venv/bin/python); when that interpreter is missing, that column is skipped with a message.
Timings: median of `--steps` after 2 warm-ups; examples/s. The machine is shared: rerun quiet before quoting.

Memory: params (float32) + Adam state + the batch, `jax.jit(step).lower(...).compile().memory_analysis()`
(argument, output, temp and generated-code bytes; temp = activations kept for the backward pass and scratch);
nothing is executed, so it runs on a laptop. Batch 1 by default (`--memory_batch`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TINY = dict(in_channels=4, out_channels=4, block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D",
            "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
            num_attention_heads=4, cross_attention_dim=32, norm_num_groups=8)
SD15 = dict(in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, layers_per_block=2,
            num_attention_heads=8, cross_attention_dim=768, norm_num_groups=32)
SIZE, CTX = 32, 8

PEER = r'''
import json, statistics, sys, time
import torch
from diffusers import UNet2DConditionModel
cfg, batch, steps, size, ctx = json.loads(sys.argv[1])
heads = cfg.pop("num_attention_heads")
torch.manual_seed(0)
unet = UNet2DConditionModel(sample_size=size, attention_head_dim=heads, **cfg)
x = torch.randn(batch, cfg["in_channels"], size, size)
c = torch.randn(batch, ctx, cfg["cross_attention_dim"])
t = torch.randint(0, 1000, (batch,))
opt = torch.optim.Adam(unet.parameters(), 1e-4)
def train():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(unet(x, t, c).sample, x)
    loss.backward()
    opt.step()
def fwd():
    with torch.no_grad():
        unet(x, t, c).sample
out = {"threads": torch.get_num_threads(), "params": sum(p.numel() for p in unet.parameters())}
for name, fn in (("train", train), ("sample", fwd)):
    for _ in range(2):
        fn()
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    out[name] = batch / statistics.median(ts)
print(json.dumps(out))
'''


def jaxmm_throughput(batch: int, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from jaxmm.models.unet import UNet, UNetConfig

    unet = UNet(UNetConfig(**TINY))
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(k[0], (batch, SIZE, SIZE, 4))
    c = jax.random.normal(k[1], (batch, CTX, TINY["cross_attention_dim"]))
    t = jax.random.randint(k[2], (batch,), 0, 1000)
    params = jax.jit(unet.init)(k[0], x, t, c)["params"]
    tx = optax.adam(1e-4)
    opt = tx.init(params)

    @jax.jit
    def train(params, opt):
        loss, g = jax.value_and_grad(lambda p: jnp.mean((unet.apply({"params": p}, x, t, c) - x) ** 2))(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt

    fwd = jax.jit(lambda p: unet.apply({"params": p}, x, t, c))
    out = {"params": sum(a.size for a in jax.tree.leaves(params))}
    state = (params, opt)
    for name in ("train", "sample"):
        ts = []
        for i in range(steps + 2):
            t0 = time.perf_counter()
            if name == "train":
                state = train(*state)
                jax.block_until_ready(state)
            else:
                jax.block_until_ready(fwd(state[0]))
            if i >= 2:
                ts.append(time.perf_counter() - t0)
        out[name] = batch / statistics.median(ts)
    return out


def peer_throughput(python: str, batch: int, steps: int) -> dict | str:
    if not os.path.exists(python):
        return f"skipped: peer interpreter {python} not found (torch + diffusers side environment)"
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
    r = subprocess.run([python, "-c", PEER, json.dumps([cfg, batch, steps, SIZE, CTX])], capture_output=True,
                       text=True, timeout=3600)
    if r.returncode:
        return f"failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def sd15_memory(batch: int = 1) -> dict:
    """Compiled memory of one SD-1.5-UNet training step (ε-MSE, Adam) at 64x64x4 latents, context 77x768."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from jaxmm.models.unet import UNet, UNetConfig

    unet = UNet(UNetConfig(**SD15))
    x = jax.ShapeDtypeStruct((batch, 64, 64, 4), jnp.float32)
    c = jax.ShapeDtypeStruct((batch, 77, 768), jnp.float32)
    t = jax.ShapeDtypeStruct((batch,), jnp.int32)
    params = nn.meta.unbox(jax.eval_shape(unet.init, jax.random.PRNGKey(0), x, t, c)["params"])
    tx = optax.adam(1e-5)
    opt = jax.eval_shape(tx.init, params)

    def step(params, opt, x, t, c):
        loss, g = jax.value_and_grad(lambda p: jnp.mean((unet.apply({"params": p}, x, t, c) - x) ** 2))(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt, loss

    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt, x, t, c).compile()
    m = compiled.memory_analysis()
    n = sum(int(jnp.size(p)) for p in jax.tree.leaves(params))
    gib = 2 ** 30
    return {"params": n, "batch": batch, "compile_s": time.perf_counter() - t0,
            "argument_gib": m.argument_size_in_bytes / gib, "output_gib": m.output_size_in_bytes / gib,
            "temp_gib": m.temp_size_in_bytes / gib, "code_gib": m.generated_code_size_in_bytes / gib,
            "alias_gib": m.alias_size_in_bytes / gib,
            "peak_estimate_gib": (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
                                  + m.temp_size_in_bytes) / gib,
            "backend": jax.default_backend()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--peer", default="/work/ref/venv/bin/python")
    p.add_argument("--skip_memory", action="store_true")
    p.add_argument("--memory_batch", type=int, default=1)
    p.add_argument("--out", default="", help="also write the results as JSON here")
    a = p.parse_args(argv)
    res = {"jaxmm": jaxmm_throughput(a.batch, a.steps), "diffusers": peer_throughput(a.peer, a.batch, a.steps),
           "batch": a.batch, "input": f"{SIZE}x{SIZE}x4", "context": f"{CTX}x{TINY['cross_attention_dim']}"}
    print(f"tiny UNet ({res['jaxmm']['params']} params), batch {a.batch} of {res['input']}, examples/s:")
    print("| | jaxmm | diffusers | jaxmm / diffusers |\n|---|---|---|---|")
    for k in ("train", "sample"):
        peer = res["diffusers"]
        if isinstance(peer, dict):
            print(f"| {k} | {res['jaxmm'][k]:.1f} | {peer[k]:.1f} | {res['jaxmm'][k] / peer[k]:.2f} |")
        else:
            print(f"| {k} | {res['jaxmm'][k]:.1f} | {peer} | - |")
    if not a.skip_memory:
        res["sd15_memory"] = mem = sd15_memory(a.memory_batch)
        print(f"SD-1.5 UNet ({mem['params'] / 1e6:.0f} M params) training step, batch {mem['batch']} of 64x64x4, "
              f"compiled memory on {mem['backend']}: arguments {mem['argument_gib']:.2f} GiB, temp "
              f"{mem['temp_gib']:.2f} GiB, peak estimate {mem['peak_estimate_gib']:.2f} GiB "
              f"(compile {mem['compile_s']:.0f} s)")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
