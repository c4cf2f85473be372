"""PEFT through the shared trainer: full fine-tuning, LoRA, P-Tuning v2 and NTK-Attention (arXiv 2406.14036) on a
small ViT and a small LLM pre-trained on embedded data, and the experiment that fills the PEFT table.

Tasks (model: `jaxmm.models.classifier.Classifier`, a backbone + linear `head`):
  `peft.vit`    images -> ViT -> pooled [CLS] -> head; scikit-learn's 8×8 digits (1 channel, 2×2 patches)
                restricted to `data.classes` (pre-train: digits 0–4; adapt: digits 5–9 — unseen classes, new head).
  `peft.llm`    byte-level LLM. objective "lm": next-byte pre-training on procedural review sentences;
                objective "classify": the same kind of sentences -> the last real token's final hidden state ->
                head; label = sentiment of the last clause: polarity(adjective) XOR "not", and with "but" the
                second clause decides ("the food was not good but the song was great" -> positive).
  `peft.table`  the experiment: pre-train each backbone once, adapt with every method × seed, each a run of the
                shared loop; the table (accuracy, trainable params and the step time, both from the runs'
                summaries) goes to results.md / results.json through the reporter.

Methods (`model.method`): "full" (every param trains), "lora" (r=8, α=16 on q, v), "prefix" (P-Tuning v2,
m=10 prefix keys/values in every layer), "ntk" (per-head Z [d, d], k [d], zero-init), "head" (the linear-probe
control). For every method but "full" the run freezes the `backbone` group (train/optim.py), so only the
method's group (`lora`, `prefix`, `ntk`) and the `head` train; the loss also stops the gradient into frozen
groups so their weight gradients are never computed (the step time is then that of a real PEFT step).
The backbone of an adapt run is loaded from `task_args.init_from` (a flax msgpack of the pre-trained `backbone`
params, written by a pre-train run with `task_args.save_params`); the method's params and the head are fresh.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import serialization, traverse_util

from jaxmm.data.reviews import sentence_data
from train.experiment import experiment
from train.metrics import write_atomic
from train.task import Hook, Task
from train.tasks import register

METHODS = ("full", "lora", "prefix", "ntk")
ALL_METHODS = (*METHODS, "head")  # "head": the linear-probe control (frozen backbone, only the head trains)
PEFT_GROUPS = {"lora": "lora", "prefix": "prefix", "ntk": "ntk"}


# ------------------------------------------------------------------------------------------------ model
def backbone_config(arch, m, dtype, remat):
    """The ViTConfig / LLMConfig of the task's `model` section, with the method's attention kind or LoRA."""
    from jaxmm.data import ByteTokenizer
    from jaxmm.models.llm import LLMConfig
    from jaxmm.models.vit import ViTConfig

    kind = dict(attention=m.method if m.method in ("ntk", "prefix") else "softmax",
                attention_args={"ntk": (("init", m.ntk_init),), "prefix": (("length", m.prefix_length),)}.get(
                    m.method, ()),
                lora_rank=m.lora_rank if m.method == "lora" else 0, lora_alpha=m.lora_alpha, dtype=dtype,
                remat=remat, d_model=m.d_model, num_layers=m.num_layers, num_heads=m.num_heads, mlp_dim=m.mlp_dim)
    if arch == "vit":
        return ViTConfig(image_size=m.image_size, patch_size=m.patch_size, num_channels=1, mlp="gelu", **kind)
    return LLMConfig(vocab_size=ByteTokenizer().vocab_size, num_kv_heads=m.num_kv_heads, tie_embeddings=True, **kind)


def frozen_groups(config) -> tuple[str, ...]:
    return tuple(sorted(g for g in config.optim.groups if config.optim.groups[g].get("frozen", False)))


def stop_frozen(params, frozen):
    """params with `stop_gradient` on the leaves of frozen groups (their weight gradients are never computed)."""
    if not frozen:
        return params
    from train.optim import group_labels

    return jax.tree.map(lambda p, g: jax.lax.stop_gradient(p) if g in frozen else p, params, group_labels(params))


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
        from jaxmm.models.classifier import Classifier

        dtype = jnp.bfloat16 if config.train.compute_dtype == "bfloat16" else None
        init_from = config.task_args.init_from
        if init_from and not os.path.isfile(init_from):
            raise FileNotFoundError(f"config.task_args.init_from: no file {init_from!r} (run the pretrain "
                                    "variant first)")
        return Classifier(self.arch, backbone_config(self.arch, m, dtype, config.train.remat), m.num_classes,
                          m.objective)

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


# ------------------------------------------------------------------------------------------------ the table
NAMES = {"full": "full fine-tuning", "lora": "LoRA (r=8, α=16; q, v)", "prefix": "P-Tuning v2 (m=10)",
         "ntk": "NTK-Attention (Z, k zero-init)", "head": "head only (linear probe)"}


def table_run(base, method: str = "full", *, seed: int = 0, init_from: str = "", save_params: str = "",
              lr: float | None = None) -> ml_collections.ConfigDict:
    """One run of the table: a copy of `base` (a stage's config, configs/peft.py `stage_config`) with the
    method, seed, backbone files and lr; every method but "full" freezes the `backbone` group."""
    from train.config import apply_overrides

    c = apply_overrides(ml_collections.ConfigDict(base.to_dict()), {
        "seed": seed, "model.method": method, "task_args.init_from": init_from,
        "task_args.save_params": save_params})
    if lr is not None:
        c.optim.lr = lr
    if method != "full":
        apply_overrides(c, {"optim.groups.backbone": {"frozen": True}})
    return c


def check_table(config):
    t = config.table
    for arch in t.archs:
        if arch not in ("vit", "llm") or arch not in t.runs:
            raise ValueError(f"config.table.archs: expected 'vit' / 'llm' with a config.table.runs.<arch> section, "
                             f"got {arch!r}")
    bad = [m for m in t.methods if m not in ALL_METHODS]
    if bad:
        raise ValueError(f"config.table.methods: expected names from {ALL_METHODS}, got {bad}")


@experiment("peft.table", check=check_table)
def run_table(config, report) -> dict:
    """Pre-train (once; reused when its params file exists), adapt every method × seed through the shared loop
    (<workdir>/<arch>/<method>_seed<seed>), and write the table. config.table: archs, methods, seeds, lr, lrs
    ({method: lr} overrides), runs.<arch>.{pretrain, adapt} (the stages' run configs) and pretrained_from (a
    directory holding <arch>/pretrain/backbone.msgpack of an earlier table run, instead of this workdir)."""
    from train.main import run

    t = config.table
    rows, summary = [], {}
    for arch in t.archs:
        pre_params = os.path.join(t.get("pretrained_from", "") or report.workdir, arch, "pretrain", "backbone.msgpack")
        if not os.path.isfile(pre_params):
            pre = run(table_run(t.runs[arch].pretrain, save_params=pre_params, lr=t.lr),
                      report.path(os.path.join(arch, "pretrain")))
            summary[f"{arch}/pretrain_{pre['metric']}"] = pre[pre["metric"]]
        for method in t.methods:
            lr = dict(t.get("lrs", {}) or {}).get(method, t.lr)
            outs = [run(table_run(t.runs[arch].adapt, method, seed=seed, init_from=pre_params, lr=lr),
                        report.path(os.path.join(arch, f"{method}_seed{seed}"))) for seed in t.seeds]
            accs = [o["eval_accuracy"] for o in outs]
            rows.append(dict(arch=arch, method=method, lr=lr, accuracy=accs, mean=float(np.mean(accs)),
                             std=float(np.std(accs)), trainable=outs[0]["trainable_params"], total=outs[0]["params"],
                             step_ms=1e3 * float(np.mean([o["step_time_s"] for o in outs])),
                             train_time_s=float(np.mean([o["train_time_s"] for o in outs]))))
    lines = ["| model | method | lr | accuracy (mean ± std, seeds) | trainable params | step time (ms) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        seeds = ", ".join(f"{a:.3f}" for a in r["accuracy"])
        lines.append(f"| {r['arch']} | {NAMES[r['method']]} | {r['lr']:g} | {r['mean']:.3f} ± {r['std']:.3f} "
                     f"({seeds}) | {r['trainable']:,} / {r['total']:,} | {r['step_ms']:.1f} |")
        for key in ("accuracy", "trainable", "step_ms"):
            summary[f"{r['arch']}/{r['method']}/{key}"] = r["mean" if key == "accuracy" else key]
    report.section("\n".join(lines), rows=rows)
    return summary
