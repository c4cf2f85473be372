"""Mesh, logical-axis rules and shardings from the config; multi-process start-up.

The mesh has the axes (`data`, `fsdp`, `tensor`) with `AxisType.Auto` (Linen's logical rules use Auto axes).
Parameter shardings come from the Linen logical annotations (`nn.with_logical_partitioning` in jaxmm.nn)
mapped through `config.mesh.rules`; a dimension the mesh axes do not divide stays replicated. Batches are
sharded on their leading (row) dimension over `data` x `fsdp`.
"""
from __future__ import annotations

import math
import os

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def maybe_initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> None:
    """`jax.distributed.initialize` when launched as several processes: from the arguments, else from the env
    vars JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (on TPU pods and SLURM, JAX finds them
    itself when JAXMM_DISTRIBUTED=1). CPU processes use gloo collectives."""
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num_processes = num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAX_PROCESS_ID"])
    auto = os.environ.get("JAXMM_DISTRIBUTED") == "1"
    if not (coordinator and num_processes > 1) and not auto:
        return
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if auto and not coordinator:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator, num_processes, process_id)


def make_mesh(shape) -> jax.sharding.Mesh:
    """A (data, fsdp, tensor) mesh over all devices; one size may be -1 (the remaining devices)."""
    shape = [int(s) for s in shape]
    n = jax.device_count()
    if shape.count(-1) > 1:
        raise ValueError(f"config.mesh.shape: expected at most one -1, got {tuple(shape)}")
    if -1 in shape:
        rest = math.prod(s for s in shape if s != -1)
        if n % rest:
            raise ValueError(f"config.mesh.shape: expected sizes dividing the {n} devices, got {tuple(shape)}")
        shape[shape.index(-1)] = n // rest
    devices = None
    if math.prod(shape) < n and jax.process_count() == 1:  # e.g. a 1-device reference run on a bigger host
        devices = jax.devices()[:math.prod(shape)]
    elif math.prod(shape) != n:
        raise ValueError(f"config.mesh.shape: expected sizes whose product is the {n} devices, got {tuple(shape)}")
    return jax.make_mesh(tuple(shape), AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def rules_from_config(rules) -> tuple:
    return tuple((str(name), (tuple(ax) if isinstance(ax, (list, tuple)) else ax)) for name, ax in rules)


def _fit(spec: P, shape, mesh) -> P:
    """Drop mesh axes from dimensions they do not divide (those dimensions stay replicated)."""
    out = []
    for dim, ax in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = () if ax is None else (ax if isinstance(ax, tuple) else (ax,))
        size = math.prod(mesh.shape[a] for a in axes)
        out.append(ax if size and dim % size == 0 else None)
    return P(*out)


def logical_to_mesh_spec(logical: P, rules) -> P:
    """Map logical dimension names to mesh axes with the first matching rule whose mesh axes this array does
    not use yet (like `nn.logical_to_mesh_axes`, but a name may repeat: ("embed", "embed") shards only the
    first dimension)."""
    used, out = set(), []
    for name in tuple(logical):
        assigned = None
        for rule_name, axes in rules:
            if rule_name != name:
                continue
            if axes is None:
                break
            group = axes if isinstance(axes, tuple) else (axes,)
            if used.isdisjoint(group):
                assigned = axes
                used.update(group)
            break
        out.append(assigned)
    return P(*out)


def param_shardings(abstract_boxed, mesh, rules):
    """NamedShardings for a (boxed, abstract) variable tree from its Linen logical annotations."""
    logical = nn.get_partition_spec(abstract_boxed)
    mesh_specs = jax.tree.map(lambda spec: logical_to_mesh_spec(spec, rules), logical,
                              is_leaf=lambda s: isinstance(s, P))
    unboxed = nn.meta.unbox(abstract_boxed)
    return jax.tree.map(lambda spec, x: NamedSharding(mesh, _fit(spec, x.shape, mesh)), mesh_specs, unboxed,
                        is_leaf=lambda s: isinstance(s, P))


def state_shardings(opt_state, params, param_sh, default):
    """Shardings for an optimizer state: a leaf whose key path ends with a parameter's path (and has its
    shape) gets that parameter's sharding (Adam's mu/nu, ...); every other leaf gets `default`."""
    def names(path):
        return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)

    by_path = {names(path): (x.shape, s) for (path, x), s in
               zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(param_sh))}
    depth = max((len(k) for k in by_path), default=0)

    def pick(path, leaf):
        n = names(path)
        for d in range(min(depth, len(n)), 0, -1):
            hit = by_path.get(n[-d:])
            if hit is not None and hit[0] == getattr(leaf, "shape", None):
                return hit[1]
        return default

    return jax.tree_util.tree_map_with_path(pick, opt_state)


def batch_sharding(mesh, ndim: int) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def local_rows(global_rows: int) -> slice:
    """The rows of a global batch this process feeds (contiguous, in process order)."""
    n, i = jax.process_count(), jax.process_index()
    if global_rows % n:
        raise ValueError(f"batch: expected a global batch divisible by {n} processes, got {global_rows} rows")
    per = global_rows // n
    return slice(i * per, (i + 1) * per)


def global_batch(local: dict, mesh) -> dict:
    """Assemble per-process numpy rows into global jax arrays sharded over (data, fsdp)."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
            for k, v in local.items()}
