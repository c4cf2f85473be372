"""Helpers for the experiment config files (configs/*.py), which are data: they import ml_collections and this
module, never the trainer.

    VARIANTS = ("full", "tiny")

    def get_config(variant=None):
        variant = pick_variant(__file__, variant, VARIANTS)     # None -> the first; unknown -> ValueError
"""
from __future__ import annotations

import os


def pick_variant(config_file: str, variant: str | None, variants, default: str | None = None) -> str:
    """`variant` checked against `variants` (`configs/x.py:variant`); None or "" gives `default` (else the first).
    An unknown name raises a ValueError naming the config file and the choices."""
    variant = variant or default or variants[0]
    if variant not in variants:
        name = os.path.join(os.path.basename(os.path.dirname(config_file)), os.path.basename(config_file))
        raise ValueError(f"{name}: variant: expected one of {tuple(variants)}, got {variant!r}")
    return variant
