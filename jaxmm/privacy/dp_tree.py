"""The DPTree family of 2407.14717 (DP cross-attention): private range sums, 1-D weighted distances,
high-dimensional weighted distances, and the softmax (polynomial-kernel) sums built on them.

Every structure is a JAX pytree (``jax.tree_util.register_dataclass``): build it once from private data with
a PRNG key, then query it any number of times, adaptively or not — the queries only read the released
(noisy) arrays, so they are post-processing and cost no extra privacy.

Components are confirmed by name and role in the paper; the details below are [reconstruction] (PAPERS.md §3):

* ``DPTree`` — a binary segment tree over N leaves (values [N] or [N, c]), padded to P = 2^⌈log₂N⌉ leaves,
  L = ⌈log₂N⌉ + 1 levels. Every node gets independent TLap(Δ, ε/L, δ/L) noise per channel.
  Privacy. Δ is the L1 sensitivity of the LEAF array (all leaves, all channels) when one private record is
  replaced. A node is the sum of its children, so by the triangle inequality every level's array has L1
  sensitivity ≤ Δ as well. Per level: i.i.d. TLap(Δ, ε', δ') on each coordinate of a vector of L1
  sensitivity Δ is (ε', δ')-DP — on the common support the density ratio is ∏ exp(|shift_j|/b) ≤ e^{ε'};
  the mass outside the neighbour's support is Σ_j T(|shift_j|), where T(t) is the TLap mass of a width-t
  tail; T is convex with T(0)=0, hence superadditive, so Σ_j T(|shift_j|) ≤ T(Σ|shift_j|) ≤ T(Δ) = δ'
  (B₀ is calibrated so that T(Δ) = δ' exactly). Basic composition over the L levels gives (ε, δ)-DP.
  [reconstruction: the paper states "each element lies in L nodes, each node TLap(Δ, ε/L, δ/L)"; the
  per-level vector argument above is ours and also covers records that move between leaves.]
  Memory (2P − 1)·c floats; build O(P·c); a range query reads ≤ 2L nodes: O(L·c) per query.
* ``DPTreeDistance`` — points x_i ∈ [lo, hi] with weights w_i ∈ [−W_c, W_c] (c channels) answering
  F(y) = Σ_i w_i |y − x_i| from one tree over N bins with 2c channels: Σw and Σw·u, u = (x − lo)/(hi − lo)
  ("two trees" of the paper stored as channels of one). With t = (y − lo)/(hi − lo) and m = ⌊t·N⌋ bins lying
  entirely at or below y:  F(y) = (hi − lo)·[t·(c_≤ − c_>) − s_≤ + s_>]  (PAPERS.md §3). Exact when y is a
  bin edge or outside [lo, hi]; otherwise the points sharing y's bin add at most 2·Σ_{i∈bin}|w_i|·(hi−lo)/N.
  Sensitivity: replacing (x, w) by (x', w') changes the count leaves by ≤ Σ_c |w_c| + |w'_c| ≤ 2ΣW_c and the
  moment leaves (u ∈ [0,1]) by ≤ 2ΣW_c: Δ = 4·ΣW_c. Inputs beyond the bounds are clipped. How many were
  clipped is a statistic of the private data with no noise, so it is NOT stored in the released structure;
  ``clip_count`` computes it for the data holder's private debug report.
* ``DPTreeHighDim`` — Σ_i w_i ‖y − x_i‖₁ for x_i ∈ R^d: one DPTreeDistance per coordinate, each with
  (ε/d, δ/d) (basic composition over the d coordinates one record touches).
* ``DPTreeSoftmax`` — Σ_i w_i ⟨U(q), U(k_i)⟩ ≈ Σ_i w_i exp(s⟨q, k_i⟩) with the polynomial features U
  (``jaxmm.ops.polynomial.polynomial_features``, r = C(d+g, g)): a DPTreeHighDim over the r feature
  coordinates Φ_l = U_l(k) ∈ [−B_l, B_l], B_l = sqrt(s^{|α|}/α!)·R^{|α|}. Query:
  A_l = Σ_i w_i Φ_il = F_l(lo_l) + lo_l·Σ_i w_i (the distance identity at y = lo), then ⟨U(q), A⟩.
  [reconstruction: how the paper turns the inner products into distance queries is not reproduced; the
  identity at y = lo reads only each tree's root, so the tree adds a factor L of noise over releasing the
  r·c feature sums once — see ``jaxmm.privacy.cross_attention`` for that baseline and the measured
  comparison in docs/results/dp_cross_attention.md.]

ε = math.inf switches the noise off (NOT private; used for exactness tests and the ε → ∞ error).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxmm.checks import check_positive, fail
from jaxmm.ops.polynomial import multi_indices, multinomial_weights, polynomial_features
from jaxmm.privacy.mechanisms import truncated_laplace, truncated_laplace_bound


def static_field(**kw):
    return dataclasses.field(metadata=dict(static=True), **kw)


def check_budget(epsilon, delta) -> None:
    check_positive("epsilon", epsilon)
    if math.isfinite(epsilon) and not 0.0 < delta < 1.0:
        fail("delta", "a number in (0, 1)", delta)


def truncated_laplace_variance(*, sensitivity: float, epsilon: float, delta: float) -> float:
    """Var of TLap(Δ, ε, δ): E z² of an exponential of scale b = Δ/ε truncated to [0, B₀] (closed form)."""
    if math.isinf(epsilon):
        return 0.0
    b = sensitivity / epsilon
    big = truncated_laplace_bound(sensitivity=sensitivity, epsilon=epsilon, delta=delta)
    a = big / b
    return b * b * (2.0 - math.exp(-a) * (a * a + 2.0 * a + 2.0)) / (-math.expm1(-a))


def tree_depth(n_leaves: int) -> int:
    """L = ⌈log₂N⌉ + 1: the number of tree nodes every leaf lies in."""
    return max(int(n_leaves) - 1, 0).bit_length() + 1



@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _build_nodes(key, v, sensitivity, epsilon, delta):
    n = v.shape[0]
    depth = tree_depth(n)
    padded = 1 << (depth - 1)
    levels = [jnp.pad(v, ((0, padded - n), (0, 0)))]
    while levels[-1].shape[0] > 1:
        levels.append(levels[-1].reshape(-1, 2, v.shape[1]).sum(axis=1))
    nodes = jnp.concatenate(levels, axis=0)
    if math.isfinite(epsilon):
        nodes = nodes + truncated_laplace(key, nodes.shape, sensitivity=sensitivity, epsilon=epsilon / depth,
                                          delta=delta / depth)
    return nodes


@functools.partial(jax.jit, static_argnums=(2,))
def _prefix_sum(nodes, b, n_leaves):
    b = jnp.clip(b, 0, n_leaves)
    depth = tree_depth(n_leaves)
    padded, out = 1 << (depth - 1), 0.0
    for level in range(depth):
        offset = 2 * padded - (2 * padded >> level)
        take = ((b >> level) & 1).astype(nodes.dtype)
        idx = offset + jnp.maximum((b >> level) - 1, 0)
        out = out + take[..., None] * nodes[idx]
    return out


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DPTree:
    """Noisy segment tree. ``nodes`` [2P − 1, c] holds level ℓ (size P/2^ℓ) at offset 2P − 2P/2^ℓ."""

    nodes: jax.Array
    n_leaves: int = static_field()
    sensitivity: float = static_field()
    epsilon: float = static_field()
    delta: float = static_field()
    squeeze: bool = static_field(default=False)

    @property
    def depth(self) -> int:
        return tree_depth(self.n_leaves)

    @property
    def padded(self) -> int:
        return 1 << (self.depth - 1)

    @property
    def node_noise_std(self) -> float:
        """Standard deviation of each node's noise (0 when ε = ∞)."""
        L = self.depth
        return math.sqrt(truncated_laplace_variance(sensitivity=self.sensitivity, epsilon=self.epsilon / L,
                                                    delta=self.delta / L))

    @property
    def memory_floats(self) -> int:
        return int(np.prod(self.nodes.shape))

    @classmethod
    def build(cls, key, values, *, sensitivity: float, epsilon: float, delta: float) -> "DPTree":
        """values [N] or [N, c]; Δ = L1 sensitivity of the whole leaf array under one replaced record."""
        if values.ndim not in (1, 2) or values.shape[0] < 1:
            fail("values", "an array [N] or [N, c] with N ≥ 1", f"shape {values.shape}")
        check_positive("sensitivity", sensitivity)
        check_budget(epsilon, delta)
        squeeze = values.ndim == 1
        v = jnp.asarray(values, jnp.float32)
        v = v[:, None] if squeeze else v
        nodes = _build_nodes(key, v, float(sensitivity), float(epsilon), float(delta))
        return cls(nodes=nodes, n_leaves=v.shape[0], sensitivity=float(sensitivity), epsilon=float(epsilon),
                   delta=float(delta), squeeze=squeeze)

    def prefix_sum(self, b):
        """Σ_{j<b} leaf_j for integer b ∈ [0, N] of any shape: [..., c] (or [...] for 1-D values).
        Reads the node ending at b on every level where bit ℓ of b is set (≤ L nodes)."""
        out = _prefix_sum(self.nodes, jnp.asarray(b, jnp.int32), self.n_leaves)
        return out[..., 0] if self.squeeze else out

    def range_sum(self, lo, hi):
        """Σ_{lo ≤ j < hi} leaf_j, vectorised over any broadcastable integer arrays lo, hi (clipped to [0, N]).
        Nodes shared by both prefixes cancel exactly, leaving the canonical O(log N) cover."""
        return self.prefix_sum(hi) - self.prefix_sum(lo)



def clip_count(x, lo, hi):
    """How many entries of x lie outside [lo, hi] (int32 array). PRIVATE: a noise-free statistic of the data,
    for the data holder's debug report only — never part of a released structure."""
    x = jnp.asarray(x)
    return jnp.sum((x < lo) | (x > hi)).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(5,))
def _distance_leaves(x, w, lo, hi, wb, n_bins):
    """Clip x to [lo, hi] and w to ±wb; per-bin [Σw | Σw·u] leaves [n_bins, 2c]."""
    xc = jnp.clip(x, lo, hi)
    wc = jnp.clip(w, -wb, wb)
    u = (xc - lo) / (hi - lo)
    bins = jnp.clip(jnp.floor(u * n_bins).astype(jnp.int32), 0, n_bins - 1)
    leaves = jnp.zeros((n_bins, 2 * w.shape[1]), jnp.float32)
    return leaves.at[bins].add(jnp.concatenate([wc, wc * u[:, None]], axis=1))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DPTreeDistance:
    """Private 1-D weighted distance F(y) = Σ_i w_i |y − x_i| (see module docstring for the derivation).

    Memory (2P − 1)·2c floats (P = n_bins padded to a power of two); build O(n·c + P·c); query O(L·c).
    """

    tree: DPTree  # leaves [N, 2c]: Σw per bin, Σw·u per bin
    lo: jax.Array
    hi: jax.Array
    squeeze: bool = static_field(default=False)

    @property
    def n_bins(self) -> int:
        return self.tree.n_leaves

    @classmethod
    def build(cls, key, x, w, *, lo, hi, weight_bound, epsilon: float, delta: float,
              n_bins: int) -> "DPTreeDistance":
        """x [n]; w [n] or [n, c]; weight_bound: scalar or [c] (|w_c| ≤ W_c); n_bins ≥ 1 bins over [lo, hi]."""
        if x.ndim != 1:
            fail("x", "a rank-1 array [n]", f"shape {x.shape}")
        if w.ndim not in (1, 2) or w.shape[0] != x.shape[0]:
            fail("w", f"an array [{x.shape[0]}] or [{x.shape[0]}, c]", f"shape {w.shape}")
        if n_bins < 1:
            fail("n_bins", "a positive integer", n_bins)
        squeeze = w.ndim == 1
        w = jnp.asarray(w, jnp.float32)
        w = w[:, None] if squeeze else w
        wb = np.broadcast_to(np.asarray(weight_bound, np.float64), (w.shape[1],))
        if not np.all(wb > 0):
            fail("weight_bound", "positive bound(s)", weight_bound)
        lo = jnp.asarray(lo, jnp.float32)
        hi = jnp.asarray(hi, jnp.float32)
        leaves = _distance_leaves(x.astype(jnp.float32), w, lo, hi, jnp.asarray(wb, jnp.float32),
                                             int(n_bins))
        tree = DPTree.build(key, leaves, sensitivity=4.0 * float(wb.sum()), epsilon=epsilon, delta=delta)
        return cls(tree=tree, lo=lo, hi=hi, squeeze=squeeze)

    def _split(self, s):
        c = s.shape[-1] // 2
        return s[..., :c], s[..., c:]

    def total_weight(self):
        """Σ_i w_i (noisy): [c] (or scalar)."""
        cnt, _ = self._split(self.tree.prefix_sum(self.n_bins))
        return cnt[..., 0] if self.squeeze else cnt

    def query(self, y):
        """F(y) for y of any shape: [..., c] (or [...])."""
        y = jnp.asarray(y, jnp.float32)
        width = self.hi - self.lo
        t = (y - self.lo) / width
        m = jnp.clip(jnp.floor(t * self.n_bins), 0, self.n_bins).astype(jnp.int32)
        c_le, s_le = self._split(self.tree.prefix_sum(m))
        c_all, s_all = self._split(self.tree.prefix_sum(jnp.full_like(m, self.n_bins)))
        c_gt, s_gt = c_all - c_le, s_all - s_le
        out = width * (t[..., None] * (c_le - c_gt) - s_le + s_gt)
        return out[..., 0] if self.squeeze else out


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DPTreeHighDim:
    """Σ_i w_i ‖y − x_i‖₁: per-coordinate DPTreeDistance trees stacked on a leading axis [d].

    Memory d·(2P − 1)·2c floats; build O(d·(n + P)·c); query O(d·L·c).
    """

    trees: DPTreeDistance

    @property
    def memory_floats(self) -> int:
        return int(np.prod(self.trees.tree.nodes.shape))

    @classmethod
    def build(cls, key, x, w, *, lo, hi, weight_bound, epsilon: float, delta: float,
              n_bins: int) -> "DPTreeHighDim":
        """x [n, d]; w [n] or [n, c]; lo, hi scalars or [d]. Each coordinate tree gets (ε/d, δ/d)."""
        if x.ndim != 2:
            fail("x", "a rank-2 array [n, d]", f"shape {x.shape}")
        check_budget(epsilon, delta)
        d = x.shape[1]
        lo = jnp.broadcast_to(jnp.asarray(lo, jnp.float32), (d,))
        hi = jnp.broadcast_to(jnp.asarray(hi, jnp.float32), (d,))

        def one(k, xm, lom, him):
            return DPTreeDistance.build(k, xm, w, lo=lom, hi=him, weight_bound=weight_bound,
                                        epsilon=epsilon / d, delta=delta / d, n_bins=n_bins)

        trees = jax.vmap(one, in_axes=(0, 1, 0, 0))(jax.random.split(key, d), x, lo, hi)
        return cls(trees=trees)

    def per_coordinate(self, y):
        """F_m(y_m) for every coordinate m: y [..., d] -> [d, ..., c]."""
        return jax.vmap(lambda t, ym: t.query(ym), in_axes=(0, 0))(self.trees, jnp.moveaxis(y, -1, 0))

    def query(self, y):
        """y [..., d] -> Σ_i w_i ‖y − x_i‖₁: [..., c] (or [...])."""
        return jnp.sum(self.per_coordinate(y), axis=0)


# polynomial_features compiled per (degree, scale); shared with cross_attention
features_jit = jax.jit(polynomial_features, static_argnums=(1, 2))


def feature_bounds(d: int, degree: int, scale: float, bound: float) -> np.ndarray:
    """B_α = sqrt(s^{|α|}/α!)·R^{|α|} ≥ |U_α(k)| for ‖k‖_∞ ≤ R (float64 [r])."""
    exps = multi_indices(d, degree)
    return np.sqrt(multinomial_weights(exps, scale)) * float(bound) ** exps.sum(axis=1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DPTreeSoftmax:
    """Private Σ_i w_i ⟨U(q), U(k_i)⟩ ≈ Σ_i w_i exp(s⟨q, k_i⟩) (see module docstring).

    Memory r·(2P−1)·2c floats (P = bins padded to a power of two); build O(n·r·d·g + r·P·c);
    query O(r·L·c + r·d·g) per query token, independent of n once built.
    """

    features: DPTreeHighDim
    degree: int = static_field()
    scale: float = static_field()
    bound_k: float = static_field()

    @property
    def memory_floats(self) -> int:
        return self.features.memory_floats

    @classmethod
    def build(cls, key, k, w, *, bound_k: float, weight_bound, degree: int, scale: float, epsilon: float,
              delta: float, n_bins: int) -> "DPTreeSoftmax":
        """k [n, d] (clipped to [−R, R]); w [n, c] (clipped to ±weight_bound)."""
        if k.ndim != 2:
            fail("k", "a rank-2 array [n, d]", f"shape {k.shape}")
        check_positive("bound_k", bound_k)
        kc = jnp.clip(k.astype(jnp.float32), -bound_k, bound_k)
        phi = features_jit(kc, int(degree), float(scale))
        b = jnp.asarray(feature_bounds(k.shape[1], degree, scale, bound_k) * (1.0 + 1e-5) + 1e-30, jnp.float32)
        feats = DPTreeHighDim.build(key, phi, w, lo=-b, hi=b, weight_bound=weight_bound, epsilon=epsilon,
                                    delta=delta, n_bins=n_bins)
        return cls(features=feats, degree=int(degree), scale=float(scale),
                   bound_k=float(bound_k))

    def feature_sums(self):
        """A [r, c] with A_l = Σ_i w_i U_l(k_i) = F_l(lo_l) + lo_l·Σ_i w_i."""
        t = self.features.trees
        f_lo = self.features.per_coordinate(t.lo)  # [r, c]: coordinate l queried at y_l = lo_l
        tot = jax.vmap(lambda tr: tr.total_weight())(t)
        lo = t.lo.reshape((-1,) + (1,) * (tot.ndim - 1))
        return f_lo + lo * tot

    def query(self, q):
        """q [..., d] -> Σ_i w_i ⟨U(q), U(k_i)⟩: [..., c]."""
        return features_jit(jnp.asarray(q, jnp.float32), self.degree, self.scale) @ self.feature_sums()
