"""The trainer's config schema: defaults for every key the shared loop reads, and the check that rejects
unknown or mistyped keys before anything is compiled.

A training config is `train.config.defaults()` updated by the experiment file, plus the task's own
sections (`model`, `data`, `task_args`) whose schema the task supplies (`Task.default_config()`):

```
task: str                       registered task name (train/tasks/<module>.py)
seed: int                       params init, data order, step RNG
model: {...}                    task schema (the task builds the model from it)
data:  {...}                    task schema
task_args: {...}                task schema (loss weights, hook settings, ...)
train.steps: int                optimizer steps
train.batch_size: int           global batch (all processes, all accumulation micro-batches)
train.grad_accum: int           micro-batches per step (batch_size % grad_accum == 0)
train.grad_clip: float          global-norm clip over the trainable params; 0 = off
train.compute_dtype: str        "float32" | "bfloat16" (params stay float32; the task passes it to the model)
train.remat: bool               rematerialise blocks (the task passes it to the model)
train.log_every: int            metrics.jsonl record every N steps (and at the last step)
train.eval_every: int           eval every N steps; 0 = only at the end
train.eval_examples: int        examples used by eval (0 = all)
train.eval_batch_size: int      eval batch (global)
train.progress: bool            tqdm bar
train.plots: bool               PNG curves at the end
train.tensorboard: bool         TensorBoard event files in the workdir (train/tensorboard.py)
train.eval_samples: int         eval examples logged to TensorBoard as images/text at each eval; 0 = none
train.profile: (start, num)     jax.profiler trace of steps [start, start+num) into <workdir>/profile; () = off
train.peak_flops_per_device: float  peak FLOP/s of one device for MFU; 0 = look it up (train/perf.py)
optim.name: str                 "adamw" | "adam" | "sgd"
optim.b1, optim.b2, optim.eps, optim.weight_decay, optim.momentum: float
optim.lr, optim.schedule, optim.warmup_steps, optim.min_lr_ratio: the default group's settings
optim.groups.<name>.{lr, schedule, warmup_steps, min_lr_ratio, frozen}: per named parameter group
                                (encoder, projector, llm, lora, ntk, prefix, ...); a missing field falls back
                                to the optim.* default; schedule is "constant" | "cosine" | "warmup_cosine" |
                                "warmup_constant" | "linear"
mesh.shape: (data, fsdp, tensor) sizes, one may be -1 (= the remaining devices)
mesh.rules: ((logical_name, mesh_axis or (axes,) or None), ...) Linen logical-axis rules
checkpoint.every: int           save every N steps (and at the end); 0 = only at the end
checkpoint.keep: int            keep the newest K
checkpoint.async_save: bool     Orbax async saves
```

A config file gives only the keys that differ: `fill(config, task_schema)` completes it from `defaults()` and
the task's schema (the loop does, and `python -m train` does when it loads the file, so `--config.train.steps=N`
works for keys the file leaves out). Values are range-checked before anything is built (`check_values`: e.g. batch_size >= 1, steps >= 0, mesh sizes
positive or one -1). A workdir with checkpoints resumes only with its saved config.json, except for
`RESUMABLE_CHANGES` (train.steps growing, eval/logging/checkpoint/mesh settings); other changes need
`--allow_config_change`.
"""
from __future__ import annotations

import difflib

import ml_collections

# A per-group optimizer section: every field is optional in a config (missing = the optim.* default).
GROUP_SCHEMA = dict(lr=0.0, schedule="constant", warmup_steps=0, min_lr_ratio=0.0, frozen=False)

# Logical-axis rules: the names jaxmm.nn uses -> mesh axes. Batch rows over data and fsdp; weights' embed
# dimension over fsdp (ZeRO-3 style); heads/mlp/vocab over tensor (Megatron style).
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
    # the residual stream, where a model sets residual_axes=("batch", "act_length", "act_embed") (jaxmm.nn
    # BlockConfig): replicated over tensor here; ("act_length", "tensor") shards it by sequence between blocks
    ("act_length", None),
    ("act_embed", None),
)


def defaults() -> ml_collections.ConfigDict:
    """Every trainer key with its default. Experiment configs start from this."""
    c = ml_collections.ConfigDict()
    c.task = ""
    c.seed = 0
    c.model = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict()
    c.task_args = ml_collections.ConfigDict()

    c.train = ml_collections.ConfigDict(dict(
        steps=100, batch_size=32, grad_accum=1, grad_clip=1.0, compute_dtype="float32", remat=False,
        log_every=10, eval_every=0, eval_examples=0, eval_batch_size=64, progress=True, plots=True,
        tensorboard=True, eval_samples=4, profile=(), peak_flops_per_device=0.0))
    c.optim = ml_collections.ConfigDict(dict(
        name="adamw", lr=1e-3, schedule="warmup_cosine", warmup_steps=0, min_lr_ratio=0.0,
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, momentum=0.0))
    c.optim.groups = ml_collections.ConfigDict()
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1), rules=DEFAULT_RULES))
    c.checkpoint = ml_collections.ConfigDict(dict(every=0, keep=2, async_save=True))
    return c


def group(**kw) -> ml_collections.ConfigDict:
    """A per-group optimizer section, e.g. `config.optim.groups.encoder = group(lr=1e-4, schedule="cosine")`."""
    check_keys("optim.groups.<group>", kw, GROUP_SCHEMA)
    return ml_collections.ConfigDict(kw)


def check_keys(where: str, given, allowed) -> None:
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            name = f"{where}.{key}" if where else key
            raise ValueError(f"config.{name}: unknown key{hint}; expected one of {sorted(allowed)}")


def _kind(v):
    if isinstance(v, bool):
        return bool
    if isinstance(v, (int, float)):
        return float  # int and float are interchangeable
    if isinstance(v, (tuple, list)):
        return tuple
    if isinstance(v, (dict, ml_collections.ConfigDict)):
        return dict
    return type(v)


def _check(path: str, given, schema) -> None:
    for key in given:
        name = f"{path}.{key}" if path else key
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"config.{name}: unknown key{hint}; expected one of {sorted(schema)}")
        value, ref = given[key], schema[key]
        if name == "optim.groups":
            for g in value:
                _check(f"optim.groups.{g}", value[g], GROUP_SCHEMA)
            continue
        if isinstance(ref, ml_collections.ConfigDict) and not isinstance(value, ml_collections.ConfigDict):
            raise ValueError(f"config.{name}: expected a section (ConfigDict), got {type(value).__name__}")
        if isinstance(ref, ml_collections.ConfigDict):
            _check(name, value, ref)
        elif ref is not None and value is not None and _kind(value) is not _kind(ref):
            raise ValueError(f"config.{name}: expected a {type(ref).__name__} like {ref!r}, "
                             f"got {type(value).__name__} {value!r}")


def fill(config, task_schema: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """The run's full config, locked: `config` (any subset of the keys: a config file gives only what differs)
    over the trainer's `defaults()` and the task's schema (`task_schema`: its `model`, `data` and `task_args`
    sections, keys with defaults). An unknown or mistyped key or a value out of range raises a ValueError naming
    it, before anything is built. Idempotent: filling a full config returns an equal one."""
    schema = defaults()
    if task_schema is not None:
        check_keys("", task_schema, ("model", "data", "task_args"))
        for section in task_schema:
            schema[section] = task_schema[section]
    _check("", config, schema)
    full = ml_collections.ConfigDict(_merge(schema.to_dict(), config.to_dict()))
    check_values(full)
    if full.train.batch_size % full.train.grad_accum:
        raise ValueError(f"config.train.grad_accum: expected a divisor of train.batch_size="
                         f"{full.train.batch_size}, got {full.train.grad_accum}")
    shape = tuple(full.mesh.shape)
    if len(shape) != 3:
        raise ValueError(f"config.mesh.shape: expected 3 sizes (data, fsdp, tensor), got {full.mesh.shape}")
    if any(not _is_int(n) or (n < 1 and n != -1) for n in shape) or shape.count(-1) > 1:
        raise ValueError(f"config.mesh.shape: expected positive integer sizes (data, fsdp, tensor), at most one "
                         f"-1 (= the remaining devices), got {shape}")
    for g in full.optim.groups:
        _check_schedule(f"optim.groups.{g}.schedule", full.optim.groups[g].get("schedule", full.optim.schedule))
    _check_schedule("optim.schedule", full.optim.schedule)
    if full.optim.name not in ("adamw", "adam", "sgd"):
        raise ValueError(f"config.optim.name: expected 'adamw', 'adam' or 'sgd', got {full.optim.name!r}")
    if full.train.compute_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"config.train.compute_dtype: expected 'float32' or 'bfloat16', "
                         f"got {full.train.compute_dtype!r}")
    profile = tuple(full.train.profile)
    if profile and (len(profile) != 2 or not all(_is_int(n) for n in profile) or min(profile) < 1):
        raise ValueError(f"config.train.profile: expected () or (first_step >= 1, num_steps >= 1), got {profile}")
    full.lock()
    return full


def _merge(base: dict, given: dict) -> dict:
    """`given` over `base`, section by section (a section's missing keys keep `base`'s values)."""
    out = dict(base)
    for key, value in given.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# (key, smallest allowed value, must be an integer): checked before anything is built, so a bad value fails
# naming its key instead of as a ZeroDivisionError or a data-loader error after compilation.
_BOUNDS = (("train.steps", 0, True), ("train.batch_size", 1, True), ("train.grad_accum", 1, True),
           ("train.log_every", 1, True), ("train.eval_every", 0, True), ("train.eval_examples", 0, True),
           ("train.eval_batch_size", 1, True), ("train.grad_clip", 0, False), ("optim.lr", 0, False),
           ("optim.warmup_steps", 0, True), ("checkpoint.every", 0, True), ("checkpoint.keep", 1, True),
           ("train.eval_samples", 0, True), ("train.peak_flops_per_device", 0, False))


def _is_int(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and float(v).is_integer()


def check_values(config) -> None:
    """ValueError naming the first trainer key outside its range (also run by `check`)."""
    for key, low, integer in _BOUNDS:
        section, leaf = key.split(".")
        v = config[section][leaf]
        kind = "an integer" if integer else "a number"
        if (integer and not _is_int(v)) or v < low:
            raise ValueError(f"config.{key}: expected {kind} >= {low}, got {v!r}")


SCHEDULES = ("constant", "cosine", "warmup_cosine", "warmup_constant", "linear")


def _check_schedule(name, value):
    if value not in SCHEDULES:
        raise ValueError(f"config.{name}: expected one of {SCHEDULES}, got {value!r}")


# Keys a resumed run may change (nothing else): they do not change the maths of the steps already taken.
# train.steps may only grow (a shorter run would have had another LR schedule).
RESUMABLE_CHANGES = ("train.steps", "train.eval_every", "train.eval_examples", "train.eval_batch_size",
                     "train.log_every", "train.progress", "train.plots", "train.tensorboard", "train.eval_samples",
                     "train.profile", "train.peak_flops_per_device", "checkpoint.every", "checkpoint.keep",
                     "checkpoint.async_save", "mesh.shape", "mesh.rules")


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
    """The keys of `config` that a run resuming from a run with the (JSON) config `saved` may not change, as
    "key: saved X, now Y" lines (RESUMABLE_CHANGES may change; train.steps only upwards)."""
    import json

    old, new = _flatten(saved), _flatten(json.loads(config.to_json_best_effort()))
    diffs = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a == b:
            continue
        if "<absent>" in (a, b) and key.split(".")[0] in ("model", "data", "task_args"):
            continue  # a task default that one side's file lacks (a plain task saves the config unmerged)
        if key == "train.steps" and isinstance(a, int) and isinstance(b, int) and b >= a:
            continue
        if key in RESUMABLE_CHANGES and key != "train.steps":
            continue
        diffs.append(f"{key}: saved {a!r}, now {b!r}")
    return diffs


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
    """Set dotted keys in place, e.g. {"train.steps": 5, "optim.lr": 1e-3} (the Python form of --config.a.b=v);
    a section a partial config lacks is created (unlocked configs)."""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            if p not in node:
                node[p] = ml_collections.ConfigDict()
            node = node[p]
        node[leaf] = value
    return config
