"""The training-task protocol: what a paper supplies to the shared loop (`train/loop.py`) instead of forking it.

Subclass `Task`, override what differs, and register an *instance*:

    from train.tasks import register
    register("mytask.vision")(MyTask())

Methods (only `build_model`, `datasets` and `loss_fn` are required):

default_config() -> ConfigDict with sections `model`, `data`, `task_args` (any subset): the keys the task reads,
    with defaults. They are the schema: a config key outside them fails before compilation, naming the key.
build_model(config) -> flax.linen.Module. Read `config.train.compute_dtype` and `config.train.remat` here.
datasets(config) -> (train, eval): `grain.MapDataset`s (or anything with `__len__`/`__getitem__`) of single
    examples, each a dict of fixed-shape numpy arrays; eval may be None. The loop shuffles (seeded, a new
    permutation each epoch), batches, splits rows over processes and checkpoints the iterator.
init_variables(model, batch, rng) -> variables (default `model.init(rng, **self.model_inputs(batch))`);
    traced under `jax.eval_shape` and `jax.jit`; only the `params` collection is trained.
model_inputs(batch) -> dict of keyword arguments for `model.apply` / `model.init` (default: the batch).
loss_fn(model, params, batch, rng) -> (scalar loss, dict of scalar metrics); traced inside the jitted step
    (with gradient accumulation it runs once per micro-batch; losses and metrics are averaged). A task that
    sets `loss_uses_extra = True` is called `loss_fn(model, params, batch, rng, extra=state.extra)` (its hook
    state, e.g. CoMMIT's κ̄ and the auxiliary loss's target).
eval_metrics(model, params, batch) -> dict name -> per-row array [rows]; jitted; the loop averages over all
    eval rows and logs `eval_<name>` (e.g. `loss`, `accuracy` from `model.generate`).
evaluate(ctx: EvalContext) -> dict: override for a fully custom evaluation (default: eval_metrics over the
    eval set).
metric: str — the summary's headline metric key (e.g. "eval_accuracy").
init_extra(config, params) -> pytree of arrays carried in `TrainState.extra`, checkpointed and restored
    (running averages, hook state). Default {}.
hooks(config) -> list[Hook]: `Hook(every, fn)`; after step s (s % every == 0) the loop calls `fn(ctx)` with a
    `HookContext` (see loop.py): it may read `ctx.state`, `ctx.batch`, `ctx.lrs()`, compute the optimizer's
    proposed update `ctx.proposed_updates(params, batch)` and one group's part `ctx.group_updates(u, g)`,
    rewrite per-group LR multipliers `ctx.set_lr_scales({group: x})` (effective LR = schedule(step) * x) or
    set `ctx.state = ctx.state.replace(extra=...)`, and return a dict of metrics merged into step s's record.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections


@dataclasses.dataclass(frozen=True)
class Hook:
    every: int
    fn: Callable[[Any], dict | None]
    name: str = "hook"


class Task:
    metric: str = "eval_loss"
    loss_uses_extra: bool = False

    def default_config(self) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(dict(model={}, data={}, task_args={}))

    def build_model(self, config):
        raise NotImplementedError

    def datasets(self, config):
        raise NotImplementedError

    def model_inputs(self, batch) -> dict:
        return dict(batch)

    def init_variables(self, model, batch, rng):
        return model.init(rng, **self.model_inputs(batch))

    def loss_fn(self, model, params, batch, rng):
        raise NotImplementedError

    def eval_metrics(self, model, params, batch) -> dict:
        loss, _ = self.loss_fn(model, params, batch, None)
        rows = next(iter(batch.values())).shape[0]
        import jax.numpy as jnp

        return {"loss": jnp.full((rows,), loss)}

    def evaluate(self, ctx) -> dict:
        return ctx.default_evaluate()

    def init_extra(self, config, params):
        return {}

    def hooks(self, config) -> list[Hook]:
        return []
