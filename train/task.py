"""The training-task protocol: what a paper supplies to the shared loop (`train/loop.py`) instead of forking it.

Subclass `Task`, override what differs, and register the *class* (or a factory `fn(config) -> Task`):

    from train.tasks import register
    register("mytask.vision")(MyTask)

The loop builds a fresh object per run: `MyTask(None)` to read `default_config()` (the schema), then
`MyTask(config)` with the config merged with those defaults. `self.config` is that run's config; anything a
method needs besides its arguments is derived from it (read-only), never stored by one method for another.

Methods (only `build_model`, `datasets` and `loss_fn` are required):

default_config() -> ConfigDict with sections `model`, `data`, `task_args` (any subset): the keys the task reads,
    with defaults. They are the schema: a config key outside them fails before compilation, naming the key.
build_model(config) -> flax.linen.Module. Read `config.train.compute_dtype` and `config.train.remat` here.
datasets(config) -> (train, eval) or `Datasets(train, eval, info)`: `grain.MapDataset`s (or anything with
    `__len__`/`__getitem__`) of single examples, each a dict of fixed-shape numpy arrays; eval may be None;
    `info` (a dict of numbers, e.g. records a source skipped) goes into summary.json. The loop orders (seeded,
    a new permutation each epoch), batches, splits rows over processes and checkpoints the iterator
    (`jaxmm.data.pipeline`).
init_variables(model, batch, rng) -> variables (default `model.init(rng, **self.model_inputs(batch))`);
    traced under `jax.eval_shape` and `jax.jit`; only the `params` collection is trained.
initial_params(params) -> params: host-side, once after the random init and before the optimizer state is
    built: put pretrained weights in (the MLLM task's `model.init.*`); default: unchanged. Keep each leaf's
    sharding (`jaxmm.hf.init.replace_group` does).
model_inputs(batch) -> dict of keyword arguments for `model.apply` / `model.init` (default: the batch).
loss_fn(model, params, batch, rng, extra) -> (scalar loss, dict of scalar metrics); traced inside the jitted
    step (with gradient accumulation it runs once per micro-batch; losses and metrics are averaged). `extra` is
    `TrainState.extra` (hook state, e.g. CoMMIT's κ̄ and the auxiliary loss's target); rng is None in eval.
eval_metrics(model, params, batch) -> dict name -> per-row array [rows]; jitted; the loop averages over all
    eval rows and logs `eval_<name>` (e.g. `loss`, `accuracy` from `model.generate`).
evaluate(ctx: EvalContext) -> dict: override for a fully custom evaluation (default: eval_metrics over the
    eval set).
metric: str — the summary's headline metric key (e.g. "eval_accuracy").
init_extra(config, params) -> pytree of arrays carried in `TrainState.extra`, checkpointed and restored
    (running averages, hook state). Default {}.
Three kinds of hooks:
hooks(config) -> list[Hook]: host-side, `Hook(every, fn)`; after step s (s % every == 0) the loop calls `fn(ctx)`
    with a `HookContext` (see loop.py): it may read `ctx.state`, `ctx.batch`, `ctx.lrs()`, compute the
    optimizer's proposed update `ctx.proposed_updates(params, batch)` and one group's part
    `ctx.group_updates(u, g)`, rewrite per-group LR multipliers `ctx.set_lr_scales({group: x})` (effective LR =
    schedule(step) * x) or set `ctx.state = ctx.state.replace(extra=...)`, and return a dict of metrics merged
    into step s's record.
step_hooks(config) -> list[StepHook]: in-step, pure functions `fn(state, batch, updates, step) -> state` traced
    inside the compiled step after the optimizer update (EMA of params, DP noise, ...); `init(params)` gives the
    entries they add to `TrainState.extra` (see `train.hooks.ema_hook`).
sample_outputs(model, params, batch) -> dict of arrays, sample_text(batch, outputs) -> list[str]: optional; a line
    per row shown with the first eval examples in TensorBoard (train/tensorboard.py).
on_end(ctx: EndContext) -> dict | None: end of run (after the last step and eval, before summary.json): plots,
    tables; the dict is merged into the summary.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections


@dataclasses.dataclass(frozen=True)
class Hook:
    """Host-side: `fn(HookContext) -> dict | None` after every `every`-th step."""
    every: int
    fn: Callable[[Any], dict | None]
    name: str = "hook"


@dataclasses.dataclass(frozen=True)
class StepHook:
    """In-step: `fn(state, batch, updates, step) -> state`, traced inside the jitted step after the update
    (`state` already holds the new params; `step` is the step just taken, 1-based). `init(params) -> dict` gives
    the entries it adds to `TrainState.extra` (checkpointed with it)."""
    fn: Callable[[Any, dict, Any, Any], Any]
    init: Callable[[Any], dict] | None = None
    name: str = "step_hook"


@dataclasses.dataclass
class EndContext:
    """What `Task.on_end` sees: the run's workdir and config, the final state, the summary so far and the
    metrics.jsonl records (empty on processes other than 0)."""
    workdir: str
    config: Any
    state: Any
    model: Any
    summary: dict
    records: list


class Datasets(tuple):
    """(train, eval) with `info`: numbers about the data (e.g. skipped records) for summary.json."""

    def __new__(cls, train, evals, info: dict | None = None):
        out = super().__new__(cls, (train, evals))
        out.info = dict(info or {})
        return out


class Task:
    metric: str = "eval_loss"

    def __init__(self, config=None):
        self.config = config  # this run's config (None for a schema-only object)

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

    def initial_params(self, params):
        return params

    def loss_fn(self, model, params, batch, rng, extra=None):
        raise NotImplementedError

    def eval_metrics(self, model, params, batch) -> dict:
        loss, _ = self.loss_fn(model, params, batch, None, {})
        rows = next(iter(batch.values())).shape[0]
        import jax.numpy as jnp

        return {"loss": jnp.full((rows,), loss)}

    def evaluate(self, ctx) -> dict:
        return ctx.default_evaluate()

    def init_extra(self, config, params):
        return {}

    def hooks(self, config) -> list[Hook]:
        return []

    def step_hooks(self, config) -> list[StepHook]:
        return []

    def on_end(self, ctx: EndContext) -> dict | None:
        return None
