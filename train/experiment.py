"""The protocol of the experiments that are not training (sweeps, mechanism audits, tables over runs); training
experiments are `train.task.Task`s run by `train/loop.py`.

An experiment is a function `run(config, report) -> summary dict` (and optionally `check(config)`, which raises a
ValueError naming the bad key before any compute), registered by name:

    from train.experiment import experiment

    @experiment("mypaper.sweep", check=_check)
    def sweep(config, report):          # report: train.report.Reporter on the workdir
        ...
        report.section("sweep", markdown_table, numbers)
        return {"headline": value}

`python -m train --config configs/mypaper.py --workdir DIR` (train/main.py) saves the config, claims the
workdir, calls `run` with a `Reporter(DIR)`, and writes the returned summary to summary.json. Everything the
experiment writes goes through the reporter: results.md / results.json (sections), other JSON files, PNGs,
metrics.jsonl. The experiment holds no state between runs.

The small optimisation loops inside experiments (a CLIP or DINO stand-in, a planner, an FID feature network) all
go through `fit` below: one jitted step, Adam or any optax transformation, optional frozen leaves, optional
non-gradient state beside the params, a step compiled once for several models of one architecture (`build_step`,
passed to `fit`), a progress bar and metrics.jsonl records like the trainer's; `sample_batch` draws their random
minibatches.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import optax

from train.tasks import register


@dataclasses.dataclass(frozen=True)
class Experiment:
    run: Callable[[Any, Any], dict]
    check: Callable[[Any], None] | None = None

    def __call__(self, config, workdir: str) -> dict:
        """Run in `workdir` (what train.main does after claiming it)."""
        from train.report import Reporter

        if self.check is not None:
            self.check(config)
        return self.run(config, Reporter(workdir))


def experiment(name: str, check: Callable[[Any], None] | None = None):
    """Decorator: register `fn(config, report) -> dict` as the experiment `name` (returns it unchanged)."""

    def deco(fn):
        register(name)(Experiment(fn, check))
        return fn

    return deco


class Fit(NamedTuple):
    """What `fit` returns: the trained params, the loss of every step ([steps], float64 holding each step's float32
    value, so host statistics are taken in float64), the wall seconds of steps 2..steps (steady state: the first
    step's compilation is not counted; 0 for fewer than 2 steps), the final non-gradient state (`aux`; None
    without one) and the process CPU seconds (all threads) of the same steps."""
    params: Any
    losses: np.ndarray
    seconds: float
    aux: Any = None
    cpu_seconds: float = 0.0

    def curve(self, every: int) -> list[tuple[int, float]]:
        """[(step, loss)] at every `every`-th step and at the last (steps counted from 1)."""
        n = len(self.losses)
        return [(s, float(self.losses[s - 1])) for s in range(1, n + 1) if s % every == 0 or s == n]


class Step(NamedTuple):
    """A built training step: the optax transformation and the jitted
    `fn(params, opt_state, aux, batch, key) -> (params, opt_state, aux, loss)`. Made by `build_step`."""
    opt: Any
    fn: Callable


def sample_batch(data: dict, names, rng, batch_size: int) -> dict:
    """One random minibatch of the rows of `data` (arrays with a shared first axis): the SAME `batch_size` row
    indices (uniform with replacement, drawn once from the numpy Generator `rng`) for every key in `names`, so the
    images, prompts, masks ... of one example stay paired."""
    n = len(data[names[0]])
    idx = rng.integers(0, n, batch_size)
    return {k: data[k][idx] for k in names}


def fit(loss_fn, params, batches, steps: int, optimizer, key, *, frozen=None, aux=None, update_aux=None,
        report=None, name: str = "fit", log_every: int = 50, progress: bool = True) -> Fit:
    """Minimise `loss_fn(params, batch, key) -> scalar` for `steps` optimizer steps (one jitted step function).

    loss_fn: the loss, or a `Step` from `build_step` (then optimizer, frozen and update_aux must be None: the step
      already holds them). Passing one built step to several calls trains several models of one architecture
      (Toffee's Refiner, View Generator and ToffeeNets) with one compilation; the caller that builds the step owns
      it, so no later call can silently run another call's loss.

    batches(step) -> batch: called on the host once per step, in order, step = 0 .. steps - 1.
    optimizer: an optax GradientTransformation, or a float: Adam at that learning rate.
    key: split every step (`key, sub = jax.random.split(key)`), `sub` goes to `loss_fn`.
    frozen(path) -> bool: leaves (path as `jax.tree_util.keystr`, e.g. "['textual']['unet']...") that get no update
      (`optax.multi_transform` with `set_to_zero`): they stay bit-identical.
    aux, update_aux: state carried beside the params and not trained by gradient (DINO's EMA teacher and centre).
      With `aux`, `loss_fn(params, batch, key, aux) -> (loss, out)` and after each update
      `aux = update_aux(aux, new_params, out, batch)`, inside the same jitted step.
    report: a `train.report.Reporter`; `{name}/loss` goes to its metrics.jsonl at every `log_every`-th step and the
      last. progress: a tqdm bar (the trainer's `train.metrics.Progress`) with the loss.
    """
    from train.metrics import Progress

    if (aux is None) != (update_aux is None):
        raise ValueError(f"fit: expected aux and update_aux together, got aux={'set' if aux is not None else None}"
                         f", update_aux={update_aux}")
    if isinstance(loss_fn, Step):
        given = {k: v for k, v in (("optimizer", optimizer), ("frozen", frozen), ("update_aux", update_aux))
                 if v is not None}
        if given:
            raise ValueError(f"fit: loss_fn is a built Step, which already holds its optimizer, frozen and "
                             f"update_aux; expected None for {sorted(given)}")
        opt, step = loss_fn
    else:
        opt, step = build_step(loss_fn, params, optimizer, frozen=frozen, update_aux=update_aux)
    opt_state = opt.init(params)

    bar = Progress(steps, 0, progress and steps > 0)
    if bar.bar is not None:
        bar.bar.set_description(name)
    losses, t0, c0, shown = [], time.perf_counter(), time.process_time(), 0
    for s in range(steps):
        key, sub = jax.random.split(key)
        params, opt_state, aux, loss = step(params, opt_state, aux, batches(s), sub)
        losses.append(loss)
        if s == 0:
            jax.block_until_ready(loss)
            t0, c0 = time.perf_counter(), time.process_time()   # steady state from here: the first step compiled
        if (s + 1) % log_every == 0 or s + 1 == steps:
            value = float(loss)
            if report is not None:
                report.metrics.write(s + 1, {f"{name}/loss": value})
            bar.update(s + 1 - shown, loss=value)
            shown = s + 1
    jax.block_until_ready(params)
    seconds = time.perf_counter() - t0 if steps > 1 else 0.0
    cpu = time.process_time() - c0 if steps > 1 else 0.0
    bar.close()
    return Fit(params, np.asarray(jax.device_get(losses), np.float64).reshape(steps), seconds, aux, cpu)


def build_step(loss_fn, params, optimizer, *, frozen=None, update_aux=None) -> Step:
    """The `Step` that `fit` runs: `optimizer` (an optax transformation, or a float: Adam at that rate) with the
    `frozen` leaves of `params` (a pytree of the model's shapes; only its structure is read) set to zero updates,
    and one jitted step of `loss_fn` (arguments as in `fit`)."""
    opt = optax.adam(optimizer) if isinstance(optimizer, (int, float)) else optimizer
    if frozen is not None:
        labels = jax.tree_util.tree_map_with_path(
            lambda p, _: "frozen" if frozen(jax.tree_util.keystr(p)) else "train", params)
        opt = optax.multi_transform({"train": opt, "frozen": optax.set_to_zero()}, labels)

    @jax.jit
    def step(params, opt_state, aux, batch, key):
        if update_aux is None:
            loss, grads = jax.value_and_grad(loss_fn)(params, batch, key)
        else:
            (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key, aux)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if update_aux is not None:
            aux = update_aux(aux, params, out, batch)
        return params, opt_state, aux, loss
    return Step(opt, step)
