"""Sample a grid from a trained `diffusion.t2i` run: one image per prompt, captioned.

    python -m train.sample --workdir runs/t2i --prompt "a red circle on the left" \\
        --prompt "two blue squares right of a green triangle" --out grid.png \\
        [--steps N] [--sampler ddim|dpmpp_2m|ddpm] [--guidance G] [--seed 0] [--per_prompt 1] [--raw]

`--steps`, `--sampler` and `--guidance` default to the run's own `task_args` (sample_steps, sampler, guidance).

Reads `<workdir>/config.json` and the EMA params `<workdir>/ema_params.msgpack` the run wrote at its end (or, with
`--raw`, the latest checkpoint's raw params). A thin layer over jaxmm.diffusion.training.generate and
jaxmm.diffusion.save_grid (train/tasks/diffusion.py builds the model and tokenizes).
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def load(workdir: str, raw: bool = False):
    """(config, model, params) of a finished diffusion.t2i workdir."""
    import jax
    import ml_collections
    from flax import serialization

    from train import checkpoint as ckpt_lib
    from train.tasks import diffusion

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--workdir: expected a diffusion.t2i run folder holding config.json, got {workdir!r}")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if config.task != "diffusion.t2i":
        raise ValueError(f"--workdir: expected a 'diffusion.t2i' run, got task {config.task!r}")
    model = diffusion.build_model(config)
    if raw:
        _, params = ckpt_lib.read_params(os.path.join(workdir, "checkpoints"))
        return config, model, params
    ema = os.path.join(workdir, "ema_params.msgpack")
    if not os.path.exists(ema):
        raise FileNotFoundError(f"--workdir: no ema_params.msgpack in {workdir!r} (written at the end of a run; "
                                "use --raw for the latest checkpoint's params)")
    with open(ema, "rb") as f:
        params = serialization.msgpack_restore(f.read())
    return config, model, jax.tree.map(jax.numpy.asarray, params)


def sample(workdir: str, prompts, out: str, steps: int | None = None, sampler: str | None = None,
           guidance: float | None = None, seed: int = 0, per_prompt: int = 1, raw: bool = False):
    """Writes the grid (one row per prompt, `per_prompt` samples each) to `out`; returns the images [-1, 1].
    `steps`, `sampler`, `guidance`: None takes the run's own (config.task_args)."""
    from jaxmm.diffusion import save_grid
    from train.tasks import diffusion

    if not prompts:
        raise ValueError("--prompt: expected at least one prompt")
    if per_prompt < 1:
        raise ValueError(f"--per_prompt: expected >= 1, got {per_prompt}")
    config, model, params = load(workdir, raw)
    fn = diffusion.sampler_fn(model, config, sampler=sampler, steps=steps, guidance=guidance)
    rows = [p for p in prompts for _ in range(per_prompt)]
    images = diffusion.sample_images(fn, params, config, rows, seed=seed)
    save_grid(images, out, nrow=per_prompt, labels=rows, scale=4)
    return images


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--prompt", action="append", default=[], required=True)
    p.add_argument("--out", default="grid.png")
    p.add_argument("--steps", type=int, default=None, help="default: the run's task_args.sample_steps")
    p.add_argument("--sampler", default=None, help="default: the run's task_args.sampler")
    p.add_argument("--guidance", type=float, default=None, help="default: the run's task_args.guidance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per_prompt", type=int, default=1)
    p.add_argument("--raw", action="store_true", help="the latest checkpoint's params instead of the EMA")
    a = p.parse_args(argv)
    sample(a.workdir, a.prompt, a.out, a.steps, a.sampler, a.guidance, a.seed, a.per_prompt, a.raw)
    print(f"[sample] {len(a.prompt)} prompt(s) -> {a.out}")


if __name__ == "__main__":
    sys.exit(main())
