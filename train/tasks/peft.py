"""PEFT through the shared trainer: full fine-tuning, LoRA, P-Tuning v2 and NTK-Attention (arXiv 2406.14036) on a
small ViT and a small LLM pre-trained on embedded data, and the experiment that fills the PEFT table.

Tasks:
  `peft.vit`    images -> ViT -> pooled [CLS] -> linear head; scikit-learn's 8×8 digits (1 channel, 2×2 patches)
                restricted to `data.classes` (pre-train: digits 0–4; adapt: digits 5–9 — unseen classes, new head).
  `peft.llm`    byte-level LLM. objective "lm": next-byte pre-training on procedural review sentences;
                objective "classify": the same kind of sentences -> the last real token's final hidden state ->
                linear head; label = sentiment of the last clause: polarity(adjective) XOR "not", and with
                "but" the second clause decides ("the food was not good but the song was great" -> positive).
  `peft.table`  the experiment (a plain run(config, workdir)): pre-train each backbone once, adapt with every
                method × seed, then time the train steps of all methods back to back in this process
                (round-robin, median), and write table.md / table.json into the workdir.

Methods (`model.method`): "full" (every param trains), "lora" (r=8, α=16 on q, v), "prefix" (P-Tuning v2,
m=10 prefix keys/values in every layer), "ntk" (per-head Z [d, d], k [d], zero-init). For every method but
"full" the config freezes the `backbone` group (train/optim.py), so only the method's group (`lora`, `prefix`,
`ntk`) and the task `head` train; the loss also stops the gradient into frozen groups so their weight gradients
are never computed (the step time is then that of a real PEFT step).
The backbone of an adapt run is loaded from `task_args.init_from` (a flax msgpack of the pre-trained `backbone`
params, written by a pre-train run with `task_args.save_params`); the method's params and the head are fresh.
"""
from __future__ import annotations

import functools
import json
import os
import statistics
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import serialization, traverse_util

from train.metrics import write_atomic
from train.task import Hook, Task
from train.tasks import register

METHODS = ("full", "lora", "prefix", "ntk")
ALL_METHODS = (*METHODS, "head")  # "head": the linear-probe control (frozen backbone, only the head trains)
PEFT_GROUPS = {"lora": "lora", "prefix": "prefix", "ntk": "ntk"}


# ------------------------------------------------------------------------------------------------- data
SUBJECTS = ("the movie", "the food", "the hotel", "the book", "the game", "the song", "my day", "the trip")
VERBS = ("was", "is", "felt")
ADVERBS = ("", "very ", "so ")
POSITIVE = ("good", "great", "fun", "nice", "superb", "lovely")
NEGATIVE = ("bad", "awful", "dull", "boring", "poor", "sad")


def review_sentence(rng: np.random.Generator) -> tuple[str, int]:
    """A procedural review and its label (1 = positive): one clause, or two joined by "but" (30%), where the
    last clause decides; a clause is positive iff its adjective is positive XOR it says "not"."""
    def clause():
        pos = rng.random() < 0.5
        neg = rng.random() < 0.5
        adj = rng.choice(POSITIVE if pos else NEGATIVE)
        text = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {'not ' if neg else ''}{rng.choice(ADVERBS)}{adj}"
        return text, int(pos != neg)

    text, label = clause()
    if rng.random() < 0.3:
        second, label = clause()
        text = f"{text} but {second}"
    return text, label


def sentence_data(n: int, seed: int, max_len: int, split: str):
    """n byte-tokenised reviews ([bos] bytes [eos], right-padded to max_len): input_ids, attention_mask, label."""
    from jaxmm.data import ByteTokenizer

    tok = ByteTokenizer()
    rng = np.random.default_rng([seed, {"train": 0, "eval": 1}[split]])
    out = []
    for _ in range(n):
        text, label = review_sentence(rng)
        ids = [tok.bos_id, *tok.encode(text), tok.eos_id][:max_len]
        pad = max_len - len(ids)
        out.append({"input_ids": np.array(ids + [tok.pad_id] * pad, np.int32),
                    "attention_mask": np.array([1] * len(ids) + [0] * pad, np.int32), "label": np.int32(label)})
    return out


# ------------------------------------------------------------------------------------------------ model
class PeftModel(nn.Module):
    """`backbone` (ViT or LLM) + `head` (Dense to num_classes; absent for the LM objective)."""

    arch: str
    backbone_config: Any
    num_classes: int
    objective: str = "classify"

    @nn.compact
    def __call__(self, inputs, attention_mask=None):
        from jaxmm.models.llm import LLM
        from jaxmm.models.vit import ViT
        from jaxmm.nn.layers import Dense

        if self.arch == "vit":
            feats = ViT(self.backbone_config, name="backbone")(inputs)["pooler_output"]
        else:
            logits, hidden = LLM(self.backbone_config, name="backbone")(inputs, attention_mask=attention_mask,
                                                                         return_hidden=True)
            if self.objective == "lm":
                return logits
            last = jnp.sum(attention_mask.astype(jnp.int32), axis=1) - 1  # right padding: the last real token
            feats = jnp.take_along_axis(hidden[-1], last[:, None, None], axis=1)[:, 0]
        return Dense(self.num_classes, axes=("embed", None), name="head")(feats).astype(jnp.float32)


def _kind_args(m):
    """The attention kind's arguments (BlockConfig.attention_args) from the task's model config."""
    return {"ntk": (("init", m.ntk_init),), "prefix": (("length", m.prefix_length),)}.get(m.method, ())


def _vit_config(m, dtype, remat):
    from jaxmm.models.vit import ViTConfig

    method = m.method
    return ViTConfig(image_size=m.image_size, patch_size=m.patch_size, num_channels=1, d_model=m.d_model,
                     num_layers=m.num_layers, num_heads=m.num_heads, mlp_dim=m.mlp_dim, mlp="gelu",
                     attention=method if method in ("ntk", "prefix") else "softmax",
                     lora_rank=m.lora_rank if method == "lora" else 0, lora_alpha=m.lora_alpha,
                     attention_args=_kind_args(m), dtype=dtype,
                     remat=remat)


def _llm_config(m, dtype, remat):
    from jaxmm.data import ByteTokenizer
    from jaxmm.models.llm import LLMConfig

    method = m.method
    return LLMConfig(vocab_size=ByteTokenizer().vocab_size, num_layers=m.num_layers, d_model=m.d_model,
                     num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, mlp_dim=m.mlp_dim, tie_embeddings=True,
                     attention=method if method in ("ntk", "prefix") else "softmax",
                     lora_rank=m.lora_rank if method == "lora" else 0, lora_alpha=m.lora_alpha,
                     attention_args=_kind_args(m), dtype=dtype,
                     remat=remat)


def frozen_groups(config) -> tuple[str, ...]:
    return tuple(sorted(g for g in config.optim.groups if config.optim.groups[g].get("frozen", False)))


def stop_frozen(params, frozen):
    """params with `stop_gradient` on the leaves of frozen groups (their weight gradients are never computed)."""
    if not frozen:
        return params
    from train.optim import group_labels

    return jax.tree.map(lambda p, g: jax.lax.stop_gradient(p) if g in frozen else p, params, group_labels(params))


def trainable_count(params, frozen) -> int:
    from train.optim import group_labels

    return int(sum(np.size(p) for p, g in zip(jax.tree.leaves(params), jax.tree.leaves(group_labels(params)))
                   if g not in frozen))


def load_backbone(params, path: str):
    """Put the pre-trained `backbone` params from a msgpack file into `params` (boxed or not). Every stored
    tensor must fit a param of the same shape; every backbone param left out must belong to a PEFT group."""
    from train.optim import param_group

    with open(path, "rb") as f:
        stored = traverse_util.flatten_dict(serialization.msgpack_restore(f.read()))
    flat = traverse_util.flatten_dict(params)
    for key, value in stored.items():
        full = ("backbone", *key)
        if full not in flat:
            raise ValueError(f"task_args.init_from: {path} holds {'/'.join(key)}, which the model's backbone lacks")
        leaf = flat[full]
        shape = tuple(getattr(leaf, "value", leaf).shape)
        if shape != value.shape:
            raise ValueError(f"task_args.init_from: {'/'.join(key)} has shape {value.shape} in {path}, the model "
                             f"expects {shape}")
        value = jnp.asarray(value, getattr(leaf, "value", leaf).dtype)
        flat[full] = leaf.replace_boxed(value) if hasattr(leaf, "replace_boxed") else value
    left = [k for k in flat if k[0] == "backbone" and k[1:] not in stored and param_group(k) not in PEFT_GROUPS]
    if left:
        raise ValueError(f"task_args.init_from: {path} lacks backbone params {['/'.join(k) for k in left]}")
    return traverse_util.unflatten_dict(flat)


# ------------------------------------------------------------------------------------------------- task
class PeftTask(Task):
    metric = "eval_accuracy"

    def __init__(self, arch: str, config=None):
        super().__init__(config)
        self.arch = arch
        if config is not None:  # this run's settings (read-only)
            self.frozen = frozen_groups(config)  # loss_fn stops their gradients
            self.lm = config.model.objective == "lm"
            self.metric = "eval_loss" if self.lm else "eval_accuracy"
            self.init_from = config.task_args.init_from  # init_variables loads the backbone from it

    def default_config(self):
        model = dict(method="full", objective="classify", num_classes=5, d_model=64, num_layers=2, num_heads=4,
                     mlp_dim=128, lora_rank=8, lora_alpha=16.0, prefix_length=10, ntk_init="zeros")
        if self.arch == "vit":
            model.update(image_size=8, patch_size=2)
            data = dict(classes=(0, 1, 2, 3, 4))
        else:
            model.update(num_kv_heads=2, num_classes=2)
            data = dict(train_examples=4000, eval_examples=512, max_len=72, seed=0)
        return ml_collections.ConfigDict(dict(model=model, data=data,
                                              task_args=dict(init_from="", save_params="")))

    def build_model(self, config):
        m = config.model
        if m.method not in ALL_METHODS:
            raise ValueError(f"config.model.method: expected one of {ALL_METHODS}, got {m.method!r}")
        if m.objective not in ("classify", "lm") or (m.objective == "lm" and self.arch == "vit"):
            raise ValueError(f"config.model.objective: expected 'classify'{' or lm' * (self.arch == 'llm')}, "
                             f"got {m.objective!r}")
        dtype = jnp.bfloat16 if config.train.compute_dtype == "bfloat16" else None
        make = _vit_config if self.arch == "vit" else _llm_config
        init_from = config.task_args.init_from
        if init_from and not os.path.isfile(init_from):
            raise FileNotFoundError(f"config.task_args.init_from: no file {init_from!r} (run the pretrain "
                                    "variant first)")
        return PeftModel(self.arch, make(m, dtype, config.train.remat), m.num_classes, m.objective)

    def datasets(self, config):
        import grain

        d = config.data
        if self.arch == "vit":
            from jaxmm.data.digits import digits_data

            train, evals = digits_data(d.classes, "train"), digits_data(d.classes, "eval")
            if len(d.classes) != config.model.num_classes:
                raise ValueError(f"config.model.num_classes: expected len(data.classes)={len(d.classes)}, got "
                                 f"{config.model.num_classes}")
        else:
            train = sentence_data(d.train_examples, d.seed, d.max_len, "train")
            evals = sentence_data(d.eval_examples, d.seed, d.max_len, "eval")
        return grain.MapDataset.source(train), grain.MapDataset.source(evals)

    def _inputs(self, batch):
        if self.arch == "vit":
            return (batch["image"],), {}
        return (batch["input_ids"],), {"attention_mask": batch["attention_mask"]}

    def init_variables(self, model, batch, rng):
        args, kw = self._inputs(batch)
        variables = model.init(rng, *args, **kw)
        path = self.init_from
        if path:
            variables = {**variables, "params": load_backbone(variables["params"], path)}
        return variables

    def _losses(self, model, params, batch):
        args, kw = self._inputs(batch)
        out = model.apply({"params": params}, *args, **kw)
        if self.lm:  # next-byte cross-entropy over real tokens, per row
            w = batch["attention_mask"][:, 1:].astype(jnp.float32)
            ce = optax.softmax_cross_entropy_with_integer_labels(out[:, :-1], batch["input_ids"][:, 1:])
            return jnp.sum(ce * w, 1) / jnp.maximum(jnp.sum(w, 1), 1.0), jnp.sum(w, 1), None
        ce = optax.softmax_cross_entropy_with_integer_labels(out, batch["label"])
        return ce, jnp.ones_like(ce), (jnp.argmax(out, -1) == batch["label"]).astype(jnp.float32)

    def loss_fn(self, model, params, batch, rng, extra=None):
        per_row, n, acc = self._losses(model, stop_frozen(params, self.frozen), batch)
        loss = jnp.sum(per_row * n) / jnp.maximum(jnp.sum(n), 1.0)
        return loss, ({} if acc is None else {"train_accuracy": jnp.mean(acc)})

    def eval_metrics(self, model, params, batch):
        per_row, _, acc = self._losses(model, params, batch)
        return {"loss": per_row} if acc is None else {"loss": per_row, "accuracy": acc}

    def hooks(self, config):
        path = config.task_args.save_params
        if not path:
            return []

        def save(ctx):
            if ctx.step == config.train.steps and jax.process_index() == 0:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                backbone = jax.device_get(ctx.state.params["backbone"])
                write_atomic(path, serialization.msgpack_serialize(jax.tree.map(np.asarray, backbone)))
            return {}

        return [Hook(config.train.steps, save, name="save_params")]


register("peft.vit", factory=functools.partial(PeftTask, "vit"))
register("peft.llm", factory=functools.partial(PeftTask, "llm"))


# ------------------------------------------------------------------------------------------------ configs
# steps, batch, eval batch for each (arch, stage) at size "default" (the table) and "toy" (the tests)
SIZES = {
    "default": {("vit", "pretrain"): (500, 64, 128), ("vit", "adapt"): (250, 64, 128),
                ("llm", "pretrain"): (800, 32, 128), ("llm", "adapt"): (300, 32, 128)},
    "toy": {("vit", "pretrain"): (3, 8, 16), ("vit", "adapt"): (3, 8, 16),
            ("llm", "pretrain"): (3, 8, 16), ("llm", "adapt"): (3, 8, 16)},
}


def make_config(arch: str, stage: str, method: str = "full", *, seed: int = 0, init_from: str = "",
                save_params: str = "", size: str = "default", lr: float = 1e-3) -> ml_collections.ConfigDict:
    """The trainer config of one run. stage "pretrain": full training of backbone + head (ViT: digits 0–4; LLM:
    next-byte LM on reviews, data seed 1) writing the backbone to `save_params`; stage "adapt": the backbone from
    `init_from`, a new head, `method` (METHODS); PEFT methods freeze the `backbone` group."""
    from train import config as config_lib

    if arch not in ("vit", "llm") or stage not in ("pretrain", "adapt") or method not in ALL_METHODS:
        raise ValueError(f"make_config: expected arch vit|llm, stage pretrain|adapt, method in {ALL_METHODS}; got "
                         f"{arch!r}, {stage!r}, {method!r}")
    task = PeftTask(arch).default_config()
    c = config_lib.defaults()
    c.task, c.seed = f"peft.{arch}", seed
    c.model, c.data, c.task_args = task.model, task.data, task.task_args
    steps, batch, eval_batch = SIZES[size][(arch, stage)]
    c.train.update(steps=steps, batch_size=batch, eval_batch_size=eval_batch, log_every=max(steps // 10, 1),
                   progress=False, plots=False)
    c.optim.update(name="adamw", lr=lr, schedule="warmup_cosine", warmup_steps=max(steps // 20, 1),
                   weight_decay=0.0)
    c.checkpoint.async_save = False
    c.model.method = method if stage == "adapt" else "full"
    if arch == "vit":
        c.data.classes = (0, 1, 2, 3, 4) if stage == "pretrain" else (5, 6, 7, 8, 9)
        c.model.num_classes = 5
    else:
        c.model.objective = "lm" if stage == "pretrain" else "classify"
        c.data.seed = 1 if stage == "pretrain" else 0
    if size == "toy":
        c.model.update(d_model=16, num_heads=2, mlp_dim=32, num_layers=1)
        if arch == "llm":
            c.model.num_kv_heads = 1
            c.data.update(train_examples=32, eval_examples=16, max_len=40)
    c.task_args.update(init_from=init_from, save_params=save_params)
    if stage == "adapt" and method != "full":
        c.optim.groups.backbone = config_lib.group(frozen=True)
    return c


# ------------------------------------------------------------------------------------------- step timing
def time_steps(configs: dict, *, rounds: int = 5, steps: int = 10) -> dict:
    """{name: median seconds per optimizer step} of the trainer's step (loss + grads + grouped AdamW update) for
    each config, measured round-robin in this process (each round times `steps` steps of every config, so a
    load change on a shared machine hits all of them alike). Single device, no sharding."""
    from train import config as config_lib
    from train import optim
    from train import tasks as task_registry
    from train.loop import example_batch

    runners = {}
    for name, cfg in configs.items():
        factory = task_registry.get(cfg.task)
        cfg = config_lib.merge_task_defaults(cfg, task_registry.build(factory).default_config())
        task = task_registry.build(factory, cfg)
        model = task.build_model(cfg)
        train_ds, _ = task.datasets(cfg)
        batch = example_batch(train_ds)
        batch = {k: np.repeat(v, cfg.train.batch_size, axis=0) for k, v in batch.items()}
        params = nn.unbox(task.init_variables(model, batch, jax.random.key(cfg.seed))["params"])
        tx, _, _ = optim.make_optimizer(cfg, params)

        def step(params, opt_state, batch, task=task, model=model, tx=tx):
            (loss, _), grads = jax.value_and_grad(lambda p: task.loss_fn(model, p, batch, None, {}), has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        fn = jax.jit(step)
        state = [params, tx.init(params)]
        p, o, loss = fn(*state, batch)  # compile
        jax.block_until_ready(loss)
        state[:] = [p, o]
        runners[name] = (fn, state, batch)
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, (fn, state, batch) in runners.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                p, o, loss = fn(*state, batch)
                state[:] = [p, o]
            jax.block_until_ready(loss)
            times[name].append((time.perf_counter() - t0) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


# ----------------------------------------------------------------------------------------------- the table
def run_table(config, workdir: str) -> dict:
    """Pre-train (once; reused when its params file exists), adapt every method × seed, time the steps; write
    table.md and table.json. config.table: archs, methods, seeds, size, timing_rounds, timing_steps, lr, and
    optionally lrs ({method: lr} overrides) and pretrained_from (a directory holding <arch>/pretrain/backbone.msgpack
    of an earlier table run, instead of this workdir)."""
    from train import config as config_lib
    from train.main import run

    t = config.table
    rows, summary = [], {}
    for arch in t.archs:
        base = os.path.join(workdir, arch)
        pre_dir = t.get("pretrained_from", "") or workdir
        pre_params = os.path.join(pre_dir, arch, "pretrain", "backbone.msgpack")
        if not os.path.isfile(pre_params):
            pre = run(make_config(arch, "pretrain", size=t.size, save_params=pre_params, lr=t.lr),
                      os.path.join(base, "pretrain"))
            summary[f"{arch}/pretrain_{pre['metric']}"] = pre[pre["metric"]]
        timing_cfgs = {}
        for method in t.methods:
            accs, times, count = [], [], None
            for seed in t.seeds:
                lr = dict(t.get("lrs", {}) or {}).get(method, t.lr)
                cfg = make_config(arch, "adapt", method, seed=seed, init_from=pre_params, size=t.size, lr=lr)
                out = run(cfg, os.path.join(base, f"{method}_seed{seed}"))
                accs.append(out["eval_accuracy"])
                times.append(out["train_time_s"])
            task = PeftTask(arch)
            merged = config_lib.merge_task_defaults(cfg, task.default_config())
            model = task.build_model(merged)
            ex = {k: np.asarray(v)[None] for k, v in task.datasets(merged)[0][0].items()}
            shapes = jax.eval_shape(lambda: nn.unbox(task.init_variables(model, ex, jax.random.key(0))["params"]))
            count = trainable_count(shapes, frozen_groups(merged))
            total = trainable_count(shapes, ())
            timing_cfgs[f"{arch}/{method}"] = cfg
            rows.append(dict(arch=arch, method=method, lr=lr, accuracy=accs, mean=float(np.mean(accs)),
                             std=float(np.std(accs)), trainable=count, total=total,
                             train_time_s=float(np.mean(times))))
        step = time_steps(timing_cfgs, rounds=t.timing_rounds, steps=t.timing_steps)
        for r in rows:
            if r["arch"] == arch:
                r["step_ms"] = 1e3 * step[f"{arch}/{r['method']}"]
    names = {"full": "full fine-tuning", "lora": "LoRA (r=8, α=16; q, v)", "prefix": "P-Tuning v2 (m=10)",
             "ntk": "NTK-Attention (Z, k zero-init)", "head": "head only (linear probe)"}
    lines = ["| model | method | lr | accuracy (mean ± std, seeds) | trainable params | step time (ms) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        seeds = ", ".join(f"{a:.3f}" for a in r["accuracy"])
        lines.append(f"| {r['arch']} | {names[r['method']]} | {r['lr']:g} | {r['mean']:.3f} ± {r['std']:.3f} ({seeds}) | "
                     f"{r['trainable']:,} / {r['total']:,} | {r['step_ms']:.1f} |")
        summary[f"{r['arch']}/{r['method']}/accuracy"] = r["mean"]
        summary[f"{r['arch']}/{r['method']}/trainable"] = r["trainable"]
        summary[f"{r['arch']}/{r['method']}/step_ms"] = r["step_ms"]
    table = "\n".join(lines)
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(workdir, "table.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(table, flush=True)
    return summary


register("peft.table")(run_table)
