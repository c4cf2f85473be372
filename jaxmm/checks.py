"""Argument checks shared by all of jaxmm (public): errors name the argument, what was expected and what came.

    from jaxmm.checks import fail, check_rank, check_shape, check_positive, check_scale
"""
from __future__ import annotations

import math
from typing import Sequence

import jax


def fail(name: str, expected: str, got) -> None:
    raise ValueError(f"{name}: expected {expected}, got {got}")


def check_rank(name: str, x, rank: int, layout: str | None = None) -> None:
    if getattr(x, "ndim", None) != rank:
        what = f"a rank-{rank} array" + (f" {layout}" if layout else "")
        fail(name, what, f"shape {getattr(x, 'shape', type(x).__name__)}")


def check_shape(name: str, x, expected: Sequence[int | None], layout: str | None = None) -> None:
    """`expected` may hold None for a free dimension."""
    shape = tuple(getattr(x, "shape", ()))
    ok = len(shape) == len(expected) and all(e is None or e == s for e, s in zip(expected, shape))
    if not ok:
        exp = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        fail(name, f"shape {exp}" + (f" {layout}" if layout else ""), f"shape {shape}")


def check_positive(name: str, value) -> None:
    if not value > 0:
        fail(name, "a positive number", value)


def check_scale(scale, name: str = "scale"):
    """A softmax temperature: finite and > 0 when concrete (a traced value passes unchecked). Returns it."""
    try:
        value = float(scale)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return scale                       # traced inside jit: cannot be inspected here
    if not (math.isfinite(value) and value > 0):
        fail(name, "a finite number > 0 (default 1/sqrt(head_dim))", value)
    return scale
