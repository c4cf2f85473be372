"""Optimizer with named parameter groups.

Every parameter belongs to one group (`param_group`): special leaf names first (`lora_a`/`lora_b` -> "lora",
names starting `ntk_` -> "ntk", `prefix_` -> "prefix"), else the top-level module name ("encoder",
"projector", "llm", ...). Each group gets its own optimizer instance wrapped in `optax.inject_hyperparams`,
with two hyper-parameters kept in the optimizer state:

    learning_rate  the group's schedule (constant / cosine / warmup + cosine / ...), evaluated at the group's count
    lr_scale       a float multiplier, 1.0 at start; hooks rewrite it at run time (CoMMIT's scheduler)

so the effective LR is `schedule(step) * lr_scale`. A frozen group is `optax.set_to_zero()`. The groups are
combined with `optax.multi_transform`; frozen gradients are zeroed and the global-norm clip runs over the
trainable ones. `group_lrs` reads the effective LRs, `set_lr_scales` rewrites them (both work on the state
inside or outside `jit`); `group_updates` gives one group's proposed update tree.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

SPECIAL_LEAVES = ((re.compile(r"^lora_[ab]$"), "lora"), (re.compile(r"^ntk_"), "ntk"),
                  (re.compile(r"^prefix_"), "prefix"))


def param_group(path: tuple[str, ...]) -> str:
    """The group of one parameter, from its path of names (e.g. ("llm", "block_0", "q", "lora_a"))."""
    for name in path:
        for pattern, group in SPECIAL_LEAVES:
            if pattern.search(name):
                return group
    return path[0] if len(path) > 1 else "params"


def group_labels(params):
    """A tree like `params` holding each leaf's group name."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: param_group(tuple(str(p) for p in k)) for k in flat})


def _group_setting(config, name, key):
    g = config.optim.groups.get(name, None)
    if g is not None and key in g:
        return g[key]
    return {"lr": config.optim.lr, "schedule": config.optim.schedule, "warmup_steps": config.optim.warmup_steps,
            "min_lr_ratio": config.optim.min_lr_ratio, "frozen": False}[key]


def schedule(kind: str, lr: float, steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0):
    """An optax schedule by name: constant, cosine, warmup_cosine, warmup_constant, linear (decay to min)."""
    end = lr * min_lr_ratio
    if kind == "constant":
        return optax.constant_schedule(lr)
    if kind == "cosine":
        return optax.cosine_decay_schedule(lr, max(steps, 1), alpha=min_lr_ratio)
    if kind == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup_steps, 0), max(steps, warmup_steps + 1),
                                                  end_value=end)
    if kind == "warmup_constant":
        return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup_steps, 1)),
                                     optax.constant_schedule(lr)], [max(warmup_steps, 1)])
    if kind == "linear":
        return optax.linear_schedule(lr, end, max(steps, 1))
    raise ValueError(f"schedule: expected constant, cosine, warmup_cosine, warmup_constant or linear, got {kind!r}")


def _base(config, learning_rate):
    o = config.optim
    if o.name == "adamw":
        wd_mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)  # no decay on biases / norm scales
        return optax.adamw(learning_rate, o.b1, o.b2, o.eps, weight_decay=o.weight_decay, mask=wd_mask)
    if o.name == "adam":
        return optax.adam(learning_rate, o.b1, o.b2, o.eps)
    return optax.sgd(learning_rate, momentum=o.momentum or None)


def _group_tx(config, name):
    if _group_setting(config, name, "frozen"):
        return optax.set_to_zero()
    sched = schedule(_group_setting(config, name, "schedule"), _group_setting(config, name, "lr"),
                     config.train.steps, _group_setting(config, name, "warmup_steps"),
                     _group_setting(config, name, "min_lr_ratio"))

    def factory(learning_rate, lr_scale):
        return _base(config, learning_rate * lr_scale)

    return optax.inject_hyperparams(factory)(learning_rate=sched, lr_scale=1.0)


def frozen_groups(config, groups) -> set[str]:
    return {g for g in groups if _group_setting(config, g, "frozen")}


def make_optimizer(config, params):
    """(tx, labels, groups): the full gradient transformation, the group-label tree and the sorted group names.
    Fails naming a configured group that matches no parameter (a typo would otherwise train with defaults)."""
    labels = group_labels(params)
    groups = sorted(set(jax.tree.leaves(labels)))
    for name in config.optim.groups:
        if name not in groups:
            raise ValueError(f"config.optim.groups.{name}: no parameter belongs to this group; "
                             f"the model's groups are {groups}")
    frozen = frozen_groups(config, groups)
    parts = []
    if frozen:  # zero frozen grads before the clip so they do not count in the norm
        parts.append(optax.masked(optax.set_to_zero(), jax.tree.map(lambda g: g in frozen, labels)))
    if config.train.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(config.train.grad_clip))
    parts.append(optax.multi_transform({g: _group_tx(config, g) for g in groups}, labels))
    return optax.chain(*parts), labels, groups


def _multi_state(opt_state):
    """The MultiTransformState inside the chain (last element)."""
    return opt_state[-1]


def group_lrs(opt_state, groups) -> dict:
    """{group: effective learning rate used by the most recent update} (0 for frozen groups)."""
    inner = _multi_state(opt_state).inner_states
    out = {}
    for g in groups:
        st = inner[g].inner_state
        hp = getattr(st, "hyperparams", None)
        out[g] = (hp["learning_rate"] * hp["lr_scale"]) if hp is not None else jnp.zeros(())
    return out


def group_base_lrs(opt_state, groups) -> dict:
    """{group: the schedule's value at the latest update} (without the lr_scale multiplier)."""
    inner = _multi_state(opt_state).inner_states
    return {g: inner[g].inner_state.hyperparams["learning_rate"] for g in groups}


def lr_scales(opt_state, groups) -> dict:
    inner = _multi_state(opt_state).inner_states
    return {g: inner[g].inner_state.hyperparams["lr_scale"] for g in groups
            if hasattr(inner[g].inner_state, "hyperparams")}


def set_lr_scales(opt_state, scales: dict):
    """A new optimizer state whose groups' `lr_scale` are replaced by `scales` ({group: float})."""
    multi = _multi_state(opt_state)
    inner = dict(multi.inner_states)
    for g, s in scales.items():
        if g not in inner or not hasattr(inner[g].inner_state, "hyperparams"):
            raise ValueError(f"scales: group {g!r} is not a trainable group; trainable groups are "
                             f"{sorted(k for k in inner if hasattr(inner[k].inner_state, 'hyperparams'))}")
        st = inner[g].inner_state
        hp = dict(st.hyperparams)
        prev = hp["lr_scale"]
        value = np.asarray(s, dtype=np.asarray(prev).dtype)
        # placed as the old value was: a scalar with another sharding changes the train step's input types, so the
        # step would be traced and compiled a second time after the first rewrite (make_array_from_callback: also
        # across processes, each giving its own devices the value)
        hp["lr_scale"] = (jax.make_array_from_callback((), prev.sharding, lambda _: value)
                          if isinstance(prev, jax.Array) else jnp.asarray(value))
        inner[g] = inner[g]._replace(inner_state=st._replace(hyperparams=hp))
    return (*opt_state[:-1], multi._replace(inner_states=inner))


def group_updates(updates, labels, group: str):
    """The part of an update (or gradient) tree that belongs to `group`, zeros elsewhere."""
    return jax.tree.map(lambda u, g: u if g == group else jnp.zeros_like(u), updates, labels)


def group_norms(tree, labels, groups) -> dict:
    """{group: global L2 norm of that group's leaves}."""
    sq = {g: jnp.zeros((), jnp.float32) for g in groups}
    for x, g in zip(jax.tree.leaves(tree), jax.tree.leaves(labels)):
        sq[g] = sq[g] + jnp.sum(jnp.square(x.astype(jnp.float32)))
    return {g: jnp.sqrt(v) for g, v in sq.items()}
