"""The shared training loop, top to bottom: config check -> mesh -> data -> model and sharded state -> resume
-> jitted step -> hooks, logging, eval, checkpoints -> plots and summary.

A task (train/task.py) supplies the model, data, loss and evaluation; everything else lives here:
named parameter groups with their own LR schedules or frozen (train/optim.py), gradient clipping and
accumulation, sharding over a (data, fsdp, tensor) mesh (train/sharding.py), Orbax checkpoints with the data
iterator (train/checkpoint.py), metrics.jsonl / progress bar / plots (train/metrics.py), TensorBoard events
(train/tensorboard.py), throughput, MFU and the profiler window (train/perf.py).

Determinism: the step RNG is `fold_in(state.rng, step)`, the data order is a seeded permutation per epoch and
the iterator position is checkpointed, so a resumed run repeats an uninterrupted one exactly.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import warnings
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from jaxmm.data import pipeline
from train import checkpoint as ckpt_lib
from train import config as config_lib
from train import metrics as metrics_lib
from train import optim
from train import perf
from train import sharding as shard_lib
from train import tensorboard as tb_lib
from train.task import EndContext


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    extra: Any

    def as_dict(self) -> dict:
        return dict(step=self.step, params=self.params, opt_state=self.opt_state, rng=self.rng, extra=self.extra)


# ----------------------------------------------------------------------------------------------- data
def loader_options(config) -> dict:
    """Grain worker processes for the loaders: `config.data.worker_count` (0 = decode in this process) and
    `config.data.worker_buffer_size`, where the task's data schema has them."""
    return dict(worker_count=int(config.data.get("worker_count", 0)),
                worker_buffer_size=int(config.data.get("worker_buffer_size", 2)))


def train_iterator(dataset, batch_size: int, steps: int, seed: int, **workers):
    """The checkpointable iterator of this process's rows of each global batch (`jaxmm.data.pipeline`: global
    batch s is examples [s*B, (s+1)*B) of a stream with a new permutation each epoch; process p feeds the p-th
    contiguous slice of it). `workers`: `loader_options`."""
    return pipeline.make_loader(dataset, batch_size=batch_size, seed=seed, num_examples=steps * batch_size,
                                num_threads=1, prefetch=2, **workers)


def eval_batches(dataset, batch_size: int, examples: int, **workers):
    """(this process's rows, their `valid` flags) of each eval batch over the first `examples` examples (0 = all),
    in order (`jaxmm.data.pipeline.eval_batches`: the last batch padded, `valid` 0 on the fillers)."""
    for batch in pipeline.eval_batches(dataset, batch_size=batch_size, num_examples=examples, **workers):
        valid = batch.pop("valid")
        yield batch, valid


def example_batch(dataset):
    """A batch of one row (the first example): the shapes `init_variables` is traced with."""
    item = dataset[0]
    return {k: np.asarray(v)[None] for k, v in item.items()}


# ----------------------------------------------------------------------------------------------- contexts
@dataclasses.dataclass
class HookContext:
    """What a hook sees after step `step` (see train/task.py). Replace `state` to change the run."""
    step: int
    state: TrainState
    batch: dict
    model: Any
    task: Any
    config: Any
    tx: optax.GradientTransformation
    labels: Any
    groups: list
    mesh: Any
    _grad_fn: Any = None
    workdir: str = ""   # the run's workdir (hooks that write files: sample grids)

    def lrs(self) -> dict:
        return {g: float(v) for g, v in optim.group_lrs(self.state.opt_state, self.groups).items()}

    def lr_scales(self) -> dict:
        return {g: float(v) for g, v in optim.lr_scales(self.state.opt_state, self.groups).items()}

    def set_lr_scales(self, scales: dict) -> None:
        """Effective LR of each named group from the next step on = its schedule x the given multiplier."""
        self.state = self.state.replace(opt_state=optim.set_lr_scales(self.state.opt_state, scales))

    def set_lrs(self, lrs: dict) -> None:
        """Set absolute LRs for the next step (the multiplier becomes lr / the schedule's latest value)."""
        base = optim.group_base_lrs(self.state.opt_state, list(lrs))
        self.set_lr_scales({g: lr / max(float(base[g]), 1e-30) for g, lr in lrs.items()})

    def proposed_updates(self, params=None, batch=None):
        """The update the optimizer would apply for `batch` at `params` (defaults: current state and batch),
        without applying it (optimizer state unchanged)."""
        return self._grad_fn(self.state, self.state.params if params is None else params,
                             self.batch if batch is None else batch)

    def group_updates(self, updates, group: str):
        return optim.group_updates(updates, self.labels, group)


@dataclasses.dataclass
class EvalContext:
    state: TrainState
    model: Any
    task: Any
    config: Any
    mesh: Any
    eval_data: Any
    _eval_fn: Any = None

    def batches(self):
        """(global batch, valid) pairs: `valid` [eval_batch_size] int32 is 0 on the filler rows of the last batch."""
        for local, valid in eval_batches(self.eval_data, self.config.train.eval_batch_size,
                                         self.config.train.eval_examples, **loader_options(self.config)):
            yield shard_lib.global_batch(local, self.mesh), shard_lib.global_batch({"v": valid}, self.mesh)["v"]

    def default_evaluate(self) -> dict:
        """Mean of each `eval_metrics` output over the real eval rows; {} when there are none."""
        sums, count = {}, 0.0
        for batch, valid in self.batches():
            out, rows = self._eval_fn(self.state.params, batch, valid)
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += float(rows)
        return {f"eval_{k}": v / count for k, v in sums.items()} if count else {}


# ----------------------------------------------------------------------------------------------- the loop
def train(config, workdir: str, task, return_state: bool = False, allow_config_change: bool = False):
    """Train with `config` in `workdir` (resuming what is there); returns the summary dict (and the final
    TrainState with `return_state`). `task` is a task factory (a `Task` subclass or `fn(config) -> Task`) or a
    registered name: a fresh task object is built for this run from the config. A workdir with checkpoints
    resumes only with the config it was started with, up to `config_lib.RESUMABLE_CHANGES`;
    `allow_config_change=True` (`--allow_config_change`) allows any change whose arrays still fit the checkpoint."""
    on_error = []  # clean-ups for a run that fails midway (a pending async checkpoint save)
    try:
        return _train(config, workdir, task, return_state, allow_config_change, on_error)
    except BaseException:
        for fn in on_error:
            fn()
        raise


def _train(config, workdir, factory, return_state, allow_config_change, on_error):
    from train import tasks as tasks_lib

    # 1. config: unknown or mistyped keys fail here, before any compilation
    config = config_lib.fill(config, tasks_lib.build(factory, None).default_config())
    task = tasks_lib.build(factory, config)  # this run's task object (nothing survives into another run)
    tc = config.train
    if jax.process_index() == 0:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # local, or gs://... (etils.epath)
        claim_workdir(workdir)  # before anything is written: a refused run must not touch a live run's files
        try:
            check_resumable_config(workdir, config, allow_config_change)
        except BaseException:
            release_workdir(workdir)
            raise
        metrics_lib.write_atomic(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))

    # 2. mesh and logical-axis rules
    mesh = shard_lib.make_mesh(config.mesh.shape)
    rules = shard_lib.rules_from_config(config.mesh.rules)
    _check_batches_fit(config, mesh)

    # 3. data and model
    data = task.datasets(config)
    train_ds, eval_ds = data
    data_info = dict(getattr(data, "info", {}))  # e.g. records a source skipped: into summary.json
    if eval_ds is not None and len(eval_ds):
        eval_ds[0]  # a formatting error in the eval data surfaces now, not after the first training stretch
    model = task.build_model(config)
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    example = example_batch(train_ds)

    def init_params(rng):
        with nn.logical_axis_rules(rules):
            return task.init_variables(model, example, rng)["params"]

    abstract_boxed = jax.eval_shape(init_params, init_rng)
    param_sh = shard_lib.param_shardings(abstract_boxed, mesh, rules)
    params = jax.jit(lambda r: nn.meta.unbox(init_params(r)), out_shardings=param_sh)(init_rng)
    params = task.initial_params(params)  # pretrained weights (e.g. model.init.*), before the optimizer state

    # 4. optimizer with named groups, the sharded train state
    tx, labels, groups = optim.make_optimizer(config, params)
    frozen = {g for g in config.optim.groups if config.optim.groups[g].get("frozen", False)}
    sizes = [(int(np.size(p)), g) for p, g in zip(jax.tree.leaves(params), jax.tree.leaves(labels))]
    param_counts = {"params": sum(n for n, _ in sizes), "trainable_params": sum(n for n, g in sizes if g not in frozen)}
    repl = shard_lib.replicated(mesh)
    opt_sh = shard_lib.state_shardings(jax.eval_shape(tx.init, params), params, param_sh, repl)
    step_hooks = task.step_hooks(config)
    extra = dict(task.init_extra(config, params))
    for hook in step_hooks:
        extra.update(hook.init(params) if hook.init else {})
    # an extra entry shaped like a param (an EMA, CoMMIT's Δ snapshot) is sharded like it; the rest is replicated
    state_sh = TrainState(step=repl, params=param_sh, opt_state=opt_sh, rng=repl,
                          extra=shard_lib.state_shardings(extra, params, param_sh, repl))
    state = jax.jit(lambda p, e: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p), state_rng, e),
                    out_shardings=state_sh)(params, extra)
    del params

    # 5. resume from the newest readable checkpoint (a corrupt one falls back to the previous)
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), config.checkpoint.every,
                                 config.checkpoint.keep, config.checkpoint.async_save)
    on_error.append(ckpt.close_after_error)  # a pending async save completes; no *.orbax-checkpoint-tmp left
    target = ckpt_lib.abstract_target(state.as_dict(), state_sh.as_dict())
    start, restored, data_iter = ckpt.restore_latest(
        target, lambda: train_iterator(train_ds, tc.batch_size, tc.steps, config.seed, **loader_options(config)))
    on_error.append(data_iter.close)  # stops its grain worker processes
    if restored is not None:
        state = TrainState(**restored)
    start = int(start or 0)
    tb = tb_lib.Writer(workdir, resume_step=start, enabled=tc.tensorboard)
    on_error.append(tb.close)
    writer = metrics_lib.MetricsWriter(os.path.join(workdir, "metrics.jsonl"), resume_step=start, sinks=(tb,))

    # 6. the jitted step
    def loss_and_grads(params, batch, rng, extra):
        loss_fn = lambda p: task.loss_fn(model, p, batch, rng, extra)  # noqa: E731
        # the mesh in context: the model's activation constraints (BlockConfig.residual_axes) apply under it
        with nn.logical_axis_rules(rules), jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, aux, grads

    def accumulated(params, batch, rng, extra):
        k = tc.grad_accum
        if k == 1:
            return loss_and_grads(params, batch, rng, extra)
        # micro-batch i = rows i, i+k, ...: each device keeps its own rows
        micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch)

        def body(carry, xs):
            mb, i = xs
            loss, aux, grads = loss_and_grads(params, mb, jax.random.fold_in(rng, i), extra)
            return jax.tree.map(jnp.add, carry, (loss, aux, grads)), None

        zero = jax.eval_shape(loss_and_grads, params, jax.tree.map(lambda x: x[0], micro), rng, extra)
        zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
        total, _ = jax.lax.scan(body, zero, (micro, jnp.arange(k)))
        return jax.tree.map(lambda x: x / k, total)

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        loss, aux, grads = accumulated(state.params, batch, rng, state.extra)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        norms = optim.group_norms(grads, labels, groups)
        metrics = {"loss": loss, **aux,
                   **{f"lr/{g}": v for g, v in optim.group_lrs(opt_state, groups).items()},
                   **{f"grad_norm/{g}": v for g, v in norms.items()}}
        state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        for hook in step_hooks:  # in-step hooks: pure functions of the new state (EMA, DP noise, ...)
            state = hook.fn(state, batch, updates, state.step)
        return state, metrics

    def batch_sh(batch):
        return {k: shard_lib.batch_sharding(mesh, v.ndim) for k, v in batch.items()}

    step_fn = None  # compiled on the first batch (its shapes give the batch shardings)

    def proposed(state, params, batch):
        _, _, grads = loss_and_grads(params, batch, jax.random.fold_in(state.rng, state.step), state.extra)
        updates, _ = tx.update(grads, state.opt_state, params)
        return updates

    proposed_fn = jax.jit(proposed)
    eval_fn = jax.jit(lambda p, b, valid: _with_rules(rules, _masked_sums, task, model, p, b, valid),
                      out_shardings=repl)

    def run_eval(state) -> dict:
        if eval_ds is None:
            return {}
        ctx = EvalContext(state, model, task, config, mesh, eval_ds, eval_fn)
        return {k: float(v) for k, v in task.evaluate(ctx).items()}

    sample_fn = (jax.jit(lambda p, b: _with_rules(rules, task.sample_outputs, model, p, b), out_shardings=repl)
                 if hasattr(task, "sample_outputs") else None)

    def log_eval_samples(step, state) -> None:
        """The first `train.eval_samples` eval examples to TensorBoard: their images, captioned with the task's
        `sample_text(batch, outputs)` of `sample_outputs(model, params, batch)` (jitted, on every process)."""
        n = min(tc.eval_samples, len(eval_ds)) if tc.tensorboard and eval_ds is not None else 0
        if not n:
            return
        rows = [eval_ds[i] for i in range(n)]
        batch = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}
        texts = None
        if hasattr(task, "sample_text"):
            outputs = {}
            if sample_fn is not None:
                replicated = {k: jax.make_array_from_callback(v.shape, repl, lambda idx, v=v: v[idx])
                              for k, v in batch.items()}
                outputs = jax.tree.map(np.asarray, sample_fn(state.params, replicated))
            texts = list(task.sample_text(batch, outputs))
        tb.samples(step, tb_lib.image_fields(batch), texts)

    # 7. the loop
    hooks = task.hooks(config)
    progress = metrics_lib.Progress(tc.steps, start, tc.progress)
    peak, peak_source = perf.device_peak(config)
    profiler = perf.ProfileWindow(tc.profile, workdir)
    on_error.append(profiler.stop)
    last_time, last_step, seen, tokens = time.perf_counter(), start, 0, 0
    metrics, eval_out, step_flops, compile_s = {}, {}, None, 0.0
    step_times = []  # seconds per step of each logging window
    t_start = time.perf_counter()
    for step in range(start + 1, tc.steps + 1):
        local = next(data_iter)
        batch = shard_lib.global_batch(local, mesh)
        if step_fn is None:
            step_fn = jax.jit(train_step, in_shardings=(state_sh, batch_sh(batch)), out_shardings=(state_sh, repl),
                              donate_argnums=(0,))
            t0 = time.perf_counter()  # compile now (the call below reuses the executable): FLOPs, and rates
            step_flops = perf.compiled_flops(step_fn, state, batch)  # without the compilation time
            compile_s = time.perf_counter() - t0
            last_time += compile_s
        profiler.before_step(step)
        state, metrics = step_fn(state, batch)
        profiler.after_step(step, metrics)
        seen += tc.batch_size
        if "attention_mask" in local:
            tokens += int(np.sum(local["attention_mask"])) * jax.process_count()

        record = {}
        for hook in hooks:
            if step % hook.every == 0:
                ctx = HookContext(step, state, batch, model, task, config, tx, labels, groups, mesh,
                                  proposed_fn, workdir)
                record.update(hook.fn(ctx) or {})
                state = ctx.state
        if step % tc.log_every == 0 or step == tc.steps or record:
            now = time.perf_counter()
            record = {**{k: float(v) for k, v in metrics.items()}, **record}
            rate = {"examples_per_s": seen / max(now - last_time, 1e-9)}
            if tokens:
                rate["tokens_per_s"] = tokens / max(now - last_time, 1e-9)
            shown = {k.split("_")[0] + "/s": round(v) for k, v in rate.items()}
            if step_flops:  # per device
                rate["tflops_per_s"] = step_flops * (step - last_step) / max(now - last_time, 1e-9) / 1e12
                if peak:
                    rate["mfu"] = shown["mfu"] = perf.mfu(step_flops, step - last_step, now - last_time, peak)
            writer.write(step, {**record, **rate})
            step_times.append((now - last_time) / (step - last_step))
            progress.update(step - last_step, loss=record["loss"], **shown)
            last_time, last_step, seen, tokens = now, step, 0, 0
        if step == tc.steps or (tc.eval_every and step % tc.eval_every == 0):
            t0 = time.perf_counter()
            eval_out = run_eval(state)
            if eval_out:
                writer.write(step, eval_out)
            log_eval_samples(step, state)
            last_time += time.perf_counter() - t0  # rates and MFU count training time only
        if ckpt.should_save(step, tc.steps):
            writer.flush()  # remote metrics.jsonl holds every record up to the step being saved
            ckpt.save(step, state.as_dict(), data_iter)
    progress.update(tc.steps - last_step)
    progress.close()
    profiler.stop(state)
    data_iter.close()
    train_time = time.perf_counter() - t_start
    on_error.clear()
    ckpt.close()
    writer.flush()

    # 8. summary and plots
    if not eval_out:  # resumed after the end, or no step ran
        eval_out = run_eval(state)
    tb.close()
    records = metrics_lib.read(writer.path) if jax.process_index() == 0 else []
    losses = [r["loss"] for r in records if "loss" in r]
    # a value that was not computed is None (JSON null) with the reason, never a NaN that reads like a result
    summary = {"steps": tc.steps, "final_loss": losses[-1] if losses else None, **eval_out,
               "train_time_s": train_time, "resumed_from": start, **param_counts,
               # median over the logging windows after the first (which holds the compilation); None if < 2
               "step_time_s": float(np.median(step_times[1:])) if len(step_times) > 1 else None}
    mfus = [r["mfu"] for r in records if "mfu" in r]
    summary.update(compile_s=compile_s, step_flops_per_device=step_flops,
                   mfu=sum(mfus) / len(mfus) if mfus else None)  # the mean over the records
    if summary["mfu"] is None:
        summary["mfu_unknown"] = ("no step ran" if step_flops is None and start >= tc.steps else
                                  "the backend gives no FLOP count" if step_flops is None else peak_source)
    summary.update(data_info)
    summary["metric"] = task.metric
    summary[task.metric] = eval_out.get(task.metric, summary.get(task.metric))
    if summary[task.metric] is None:
        summary["eval_skipped"] = ("no eval set" if eval_ds is None else
                                   "the eval set is empty" if not len(eval_ds) else
                                   f"the task's evaluation returned no {task.metric!r}")
    if tc.plots and jax.process_index() == 0 and records:
        metrics_lib.plot(writer.path, workdir)
    end = task.on_end(EndContext(workdir, config, state, model, summary, records))  # plots, tables
    summary.update(end or {})
    if jax.process_index() == 0:
        metrics_lib.write_atomic(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2, default=str))
        release_workdir(workdir)
    return (summary, state) if return_state else summary


def _check_batches_fit(config, mesh) -> None:
    """Batches are split over the data-parallel devices (mesh data x fsdp) and the processes: refuse sizes that
    do not divide before any data is read or anything compiled."""
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    for key in ("batch_size", "eval_batch_size"):
        for size, what in ((dp, f"data-parallel size {dp} (mesh.shape {tuple(mesh.shape.values())}: data x fsdp)"),
                           (jax.process_count(), f"process count {jax.process_count()}")):
            if config.train[key] % size:
                raise ValueError(f"config.train.{key}: expected a multiple of the {what}, got {config.train[key]}")


def check_resumable_config(workdir: str, config, allow_change: bool = False) -> None:
    """Refuse to resume a workdir's checkpoints with a config that changed (other than RESUMABLE_CHANGES):
    ValueError listing each differing key with its saved and new value."""
    directory, path = epath.Path(workdir) / "checkpoints", epath.Path(workdir) / "config.json"
    if allow_change or not path.exists() or not directory.is_dir():
        return
    if not any(p.name.isdigit() for p in directory.iterdir()):
        return  # nothing to resume
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # unreadable (written atomically, so only by hand): nothing to compare with
    diffs = config_lib.resume_differences(saved, config)
    if diffs:
        raise ValueError(f"workdir {workdir}: its checkpoints were written with another config; resuming would "
                         f"silently continue with new values. Differences (expected the saved value):\n  "
                         + "\n  ".join(diffs) + "\nUse another --workdir, or pass --allow_config_change "
                         f"(python: allow_config_change=True) to resume with the new values.")


def _claim_text(workdir) -> str:
    """RUNNING.pid's content: the pid; on a remote workdir `pid@host` (a pid means nothing on another machine)."""
    return f"{os.getpid()}@{socket.gethostname()}" if metrics_lib.is_remote(workdir) else str(os.getpid())


def release_workdir(workdir: str) -> None:
    """Remove this process's claim (RUNNING.pid) on `workdir`, if it holds it."""
    path = epath.Path(workdir) / "RUNNING.pid"
    try:
        if path.read_text().strip() == _claim_text(workdir):
            path.unlink()
    except OSError:
        pass


def claim_workdir(workdir: str) -> None:
    """Refuse to share a workdir with another live run (two runs appending to one metrics.jsonl and racing
    on checkpoints corrupt both). The pid file survives a SIGKILL; a dead pid does not block the rerun.
    A remote workdir's claim names the host: one from another machine cannot be checked (a preempted VM's
    restart must go on), so it only warns. Read-then-write, not an atomic create: two runs started in the
    same instant can both pass."""
    path = epath.Path(workdir) / "RUNNING.pid"
    try:
        pid, _, host = path.read_text().strip().partition("@")
        pid = int(pid or 0)
    except (OSError, ValueError):
        pid, host = 0, ""
    if pid and host and host != socket.gethostname():
        msg = (f"workdir {workdir}: claimed by pid {pid} on host {host}, which this machine cannot check; "
               f"going on (make sure that run has ended)")
        warnings.warn(msg)
    elif pid and pid != os.getpid():
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if alive:
            raise RuntimeError(f"workdir {workdir}: another run (pid {pid}) is using it; wait for it or use "
                               f"another --workdir (remove {os.fspath(path)} if that process is not a run)")
    path.write_text(_claim_text(workdir))


def _masked_sums(task, model, params, batch, valid):
    """Sums of the task's per-row eval metrics over the valid rows, and the number of valid rows."""
    out = task.eval_metrics(model, params, batch)
    w = valid.astype(jnp.float32)
    return ({k: jnp.sum(v * w.reshape(w.shape + (1,) * (v.ndim - 1))) for k, v in out.items()},
            jnp.sum(w))


def _with_rules(rules, fn, *args):
    with nn.logical_axis_rules(rules):
        return fn(*args)
