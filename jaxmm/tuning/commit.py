"""CoMMIT (arXiv 2407.20454): learning-balance coefficient κ, dynamic learning-rate scheduler, auxiliary loss.

Usable from any training loop: everything here is a pure function of (a logits function, params, the
optimizer's proposed update, a probe batch). The MLLM is split into the feature encoder S (encoder + projector)
and the backbone LLM T by a path predicate (`is_encoder`).

What the paper confirms: κ is a ratio of two KL divergences measuring how much each component's update changes
the output (generation) distribution, κ ∈ [0, 1], κ → 1 when the encoder dominates; a scheduler sets both
components' learning rates from a running average of κ every L_lr steps; a label-free auxiliary loss keeps the
lagging component's gradient from vanishing. The exact formulas are not public to us; every formula below is
our **[reconstruction]** (PAPERS.md §1), each behind a switch:

  D_S = E_x KL( p(·|x; θ_S+Δ_S, θ_T) ‖ p(·|x; θ_S, θ_T) )        (only the encoder takes its proposed step)
  D_T = E_x KL( p(·|x; θ_S, θ_T+Δ_T) ‖ p(·|x; θ_S, θ_T) )        (only the LLM takes its proposed step)
  κ   = D_S / (D_S + D_T)        (formula="share"; formula="ratio": κ = D_S / D_T)
  η_S = η₀_S · 2(1 − κ̄),  η_T = η₀_T · 2κ̄,  each clipped to [lo·η₀, hi·η₀]     (κ̄ = 0.5 is constant LR)

Δ must be the step the optimizer would take at the BASE learning rates η₀ (multipliers 1), not at the rates the
scheduler last set: the KL grows with the square of the step, so a κ measured under the scheduler's own
multipliers mostly measures those multipliers, and the rule η ← f(κ̄) then feeds back on itself and flips
between two states (docs/results/commit.md, "what changed"). With Δ at the base rates the rule is a function
of the model's state alone: under a fixed model it converges in one window.

Auxiliary loss ("lead step" target; ours, [reconstruction] — the paper confirms only that it is label-free,
depends on each component's learning state and keeps the lagging component's gradient from vanishing):

  q   = p(·|x; θ + Δ_lead)        Δ_lead = the LEADING side's part of the last measured base-rate step Δ
  aux = λ · w · Div( sg q ‖ p(·|x; θ) ),  gradient routed through the LAGGING side's parameters only
        w = max(0, 1 − 2κ̄) when the encoder lags (κ̄ < ½), max(0, 2κ̄ − 1) when the LLM lags; Div = KL or JS.

i.e. the lagging side is trained to reproduce the change of the output distribution that the leading side's
next step would make. Its gradient, Σ (p − q)·∂logits/∂θ_lag for KL, is non-zero whenever the leading side's
step moves the output (D_lead > 0) — also at the point where Δ was measured. (The previous version, a
divergence to a parameter snapshot taken at each measurement, had gradient exactly zero at the snapshot and
O(distance) after it: inert by construction.) It reads no labels: its target is the model's own output after
a proposed step.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxmm.checks import fail

FORMULAS = ("share", "ratio")
DIVERGENCES = ("js", "kl")


def _log_probs(logits):
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def masked_mean(x, mask):
    mask = jnp.broadcast_to(mask, x.shape).astype(jnp.float32)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def kl_divergence(logits_p, logits_q, mask=None):
    """Mean over (masked) positions of KL(p ‖ q) between next-token distributions softmax(logits)."""
    lp, lq = _log_probs(logits_p), _log_probs(logits_q)
    kl = jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)
    return masked_mean(kl, jnp.ones(kl.shape) if mask is None else mask)


def js_divergence(logits_p, logits_q, mask=None):
    """Mean over (masked) positions of the Jensen–Shannon divergence (≤ ln 2)."""
    lp, lq = _log_probs(logits_p), _log_probs(logits_q)
    lm = jnp.logaddexp(lp, lq) - jnp.log(2.0)
    js = 0.5 * jnp.sum(jnp.exp(lp) * (lp - lm), -1) + 0.5 * jnp.sum(jnp.exp(lq) * (lq - lm), -1)
    return masked_mean(js, jnp.ones(js.shape) if mask is None else mask)


def path_mask(params, is_encoder: Callable[[tuple[str, ...]], bool]):
    """Pytree of Python bools: True where the leaf belongs to the encoder side S."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: bool(is_encoder(tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in p))), params)


def split_update(updates, side_mask):
    """(Δ_S, Δ_T): the proposed update restricted to the encoder side and to the LLM side (zeros elsewhere)."""
    zs = lambda u, s: u if s else jnp.zeros_like(u)
    zt = lambda u, s: jnp.zeros_like(u) if s else u
    return jax.tree.map(zs, updates, side_mask), jax.tree.map(zt, updates, side_mask)


def kappa_from(d_s, d_t, formula: str = "share", eps: float = 1e-12):
    d_s, d_t = jnp.maximum(d_s, 0.0), jnp.maximum(d_t, 0.0)  # KL >= 0; float round-off can dip below
    if formula == "share":
        return d_s / jnp.maximum(d_s + d_t, eps)
    if formula == "ratio":
        return d_s / jnp.maximum(d_t, eps)
    fail("formula", f"one of {FORMULAS}", repr(formula))


def balance_coefficient(logits_fn, params, updates, probe_batch, side_mask, *, formula: str = "share"):
    """κ on a probe batch from the optimizer's proposed update Δ (what `optimizer.update` returned).

    logits_fn(params, batch) -> (logits [B, L, V], mask [B, L]) over the answer positions.
    side_mask: `path_mask(params, is_encoder)`. Returns {"d_s", "d_t", "kappa"} (float32 scalars).
    """
    u_s, u_t = split_update(updates, side_mask)
    base, mask = logits_fn(params, probe_batch)
    step_s, _ = logits_fn(jax.tree.map(jnp.add, params, u_s), probe_batch)
    step_t, _ = logits_fn(jax.tree.map(jnp.add, params, u_t), probe_batch)
    d_s = kl_divergence(step_s, base, mask)
    d_t = kl_divergence(step_t, base, mask)
    return {"d_s": d_s, "d_t": d_t, "kappa": kappa_from(d_s, d_t, formula)}


RULES = ("symmetric", "boost_lagging")


def scheduled_learning_rates(kappa_bar, base_lr_encoder: float, base_lr_llm: float,
                             clip: tuple[float, float] = (0.1, 2.0), rule: str = "symmetric"):
    """Per-side learning rates from the window mean κ̄. [reconstruction]

    rule="symmetric":     η_S = η₀_S·2(1−κ̄), η_T = η₀_T·2κ̄, each clipped to [clip[0]·η₀, clip[1]·η₀]
                          (slows the leading side as much as it speeds up the lagging one);
    rule="boost_lagging": η_S = η₀_S·clip((1−κ̄)/κ̄, 1, clip[1]), η_T = η₀_T·clip(κ̄/(1−κ̄), 1, clip[1])
                          (only the lagging side is sped up; the leading side keeps its base rate).
    Both have the constant-LR fixed point κ̄ = 0.5.
    """
    lo, hi = clip
    if not 0 <= lo <= hi:
        fail("clip", "0 <= lo <= hi", clip)
    k = jnp.clip(jnp.asarray(kappa_bar, jnp.float32), 0.0, 1.0)
    if rule == "symmetric":
        lr_s = jnp.clip(base_lr_encoder * 2 * (1 - k), lo * base_lr_encoder, hi * base_lr_encoder)
        lr_t = jnp.clip(base_lr_llm * 2 * k, lo * base_lr_llm, hi * base_lr_llm)
        return lr_s, lr_t
    if rule == "boost_lagging":
        eps = 1e-6
        lr_s = base_lr_encoder * jnp.clip((1 - k) / jnp.maximum(k, eps), 1.0, max(hi, 1.0))
        lr_t = base_lr_llm * jnp.clip(k / jnp.maximum(1 - k, eps), 1.0, max(hi, 1.0))
        return lr_s, lr_t
    fail("rule", f"one of {RULES}", repr(rule))


def aux_weights(kappa_bar):
    """(w_S, w_T): the lagging component's share. κ̄ < 0.5: encoder lags, w_S = 1 − 2κ̄. [reconstruction]"""
    k = jnp.clip(jnp.asarray(kappa_bar, jnp.float32), 0.0, 1.0)
    return jnp.maximum(0.0, 1 - 2 * k), jnp.maximum(0.0, 2 * k - 1)


def lead_step(updates, side_mask, encoder_lags):
    """The leading side's part of Δ: Δ_T if the encoder lags, else Δ_S (zeros on the lagging side).
    `encoder_lags` may be a traced bool."""
    return jax.tree.map(lambda u, s: jnp.where(encoder_lags != s, u, jnp.zeros_like(u)), updates, side_mask)


def aux_loss(logits_fn, params, updates, batch, side_mask, kappa_bar, *, weight: float = 0.1,
             divergence: str = "kl"):
    """Label-free auxiliary loss λ·w·Div(sg p(θ + Δ_lead) ‖ p(θ)) whose gradient reaches only the lagging side.

    updates: the optimizer's proposed step Δ from the last κ measurement (at the base rates); only its leading
    side's part is used, to build the target. kappa_bar: the window mean that decides which side lags and w.
    Uses only the inputs of `batch` and the mask `logits_fn` returns: `logits_fn` must not read targets.
    [reconstruction] — see the module docstring."""
    if divergence not in DIVERGENCES:
        fail("divergence", f"one of {DIVERGENCES}", repr(divergence))
    w_s, w_t = aux_weights(kappa_bar)
    encoder_lags = w_s > 0
    # the leaves of the side that does NOT lag are stop-gradient'ed: one forward, gradient only to the lagging side
    routed = jax.tree.map(lambda p, s: jnp.where(encoder_lags == s, p, jax.lax.stop_gradient(p)), params, side_mask)
    logits, mask = logits_fn(routed, batch)
    moved = jax.tree.map(jnp.add, jax.lax.stop_gradient(params),
                         jax.lax.stop_gradient(lead_step(updates, side_mask, encoder_lags)))
    target, _ = logits_fn(moved, batch)
    target = jax.lax.stop_gradient(target)
    div = (js_divergence if divergence == "js" else kl_divergence)(target, logits, mask)
    return weight * (w_s + w_t) * div
