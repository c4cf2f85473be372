"""Tensor (2-simplicial) attention, exact and in almost linear time (Liang, Shi, Song, Zhou; arXiv 2405.16411).

For each query i, a softmax over the n² key pairs (j, k):

    S_ijk = s · Σ_l Q_il K1_jl K2_kl,    P_ijk = softmax_{(j,k)}(S_i··),    O_i = Σ_jk P_ijk (V1_j ∘ V2_k)

i.e. O = D⁻¹ exp(s·Q (K1 ⊘ K2)ᵀ)(V1 ⊘ V2) with ⊘ the column-wise Kronecker (Khatri–Rao) product (PAPERS.md §10).

method="exact": flash-style. Queries in blocks; for each block an online softmax runs over tiles of (j, k)
  pairs, so memory is O(block_q · block_k² + n·d), never the n × n² score matrix. A custom VJP recomputes the
  tiles and applies the closed-form per-tensor gradients (Δ_i = ⟨dO_i, O_i⟩):
    dP_ijk = ⟨dO_i, V1_j∘V2_k⟩, dS = P∘(dP − Δ), dQ_i = s Σ_jk dS_ijk K1_j∘K2_k, dK1_j = s Σ_ik dS_ijk Q_i∘K2_k,
    dK2_k = s Σ_ij dS_ijk Q_i∘K1_j, dV1_j = Σ_ik P_ijk dO_i∘V2_k, dV2_k = Σ_ij P_ijk dO_i∘V1_j.
  The Pallas kernel in jaxmm.kernels.tensor_attention computes the same maths; `jaxmm.attention.tensor_attention`
  chooses between them per platform.
method="poly": the degree-g Taylor expansion exp(s·Σ_l q_l a_l b_l) ≈ Σ_{|α|≤g} s^{|α|}/α! q^α a^α b^α gives
  feature maps U1 (queries), U2 (K1), U3 (K2) of rank r = C(d+g, g), and the Khatri–Rao identity
  (A⊘B)ᵀ(C⊘D) = (AᵀC)∘(BᵀD) gives  z = U1((U2ᵀ1)∘(U3ᵀ1)),  O = diag(z)⁻¹ U1 ((U2ᵀV1)∘(U3ᵀV2)):
  O(n·r·d) time and memory forward and backward (custom VJP of the Khatri–Rao core; the feature maps are
  differentiated through their gather construction; causal: prefix sums over j, k ≤ i).
  Its relative error per score is at most ε = e^{2β} β^{g+1}/(g+1)! with β = max|S_ijk| (Lagrange remainder),
  so |O_poly − O| ≤ 2ε/(1−ε) · max|V1∘V2|; with entries bounded by B, β ≤ s·d·B³ = B³ for s = 1/d, which is the
  paper's phase transition: tiny error for B³ ≪ g, blow-up beyond.

Layout: q, k1, k2 [batch, n, heads, d]; v1, v2 [batch, m, heads, dv] (k1, k2, v1, v2 share m).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmm.ops import polynomial
from jaxmm.checks import check_rank, check_shape, fail

METHODS = ("exact", "poly")
_NEG = -1e30  # finite "minus infinity" for masked scores (avoids inf − inf)


# ----------------------------------------------------------------------------------------------------------------
# argument checks and layout
# ----------------------------------------------------------------------------------------------------------------
def check_tensor_inputs(q, k1, k2, v1, v2, key_mask, is_causal):
    check_rank("q", q, 4, "[batch, n, heads, d]")
    b, n, h, d = q.shape
    check_rank("k1", k1, 4, "[batch, m, heads, d]")
    m = k1.shape[1]
    check_shape("k1", k1, (b, None, h, d), "[batch, m, heads, d]")
    check_shape("k2", k2, (b, m, h, d), "[batch, m, heads, d] (like k1)")
    check_rank("v1", v1, 4, "[batch, m, heads, dv]")
    dv = v1.shape[-1]
    check_shape("v1", v1, (b, m, h, None), "[batch, m, heads, dv]")
    check_shape("v2", v2, (b, m, h, dv), "[batch, m, heads, dv] (like v1)")
    if is_causal and n != m:
        fail("is_causal", f"queries and keys of the same length (q has n={n})", f"keys of length m={m}")
    if key_mask is not None:
        check_shape("key_mask", key_mask, (b, m), "[batch, m] (True = key takes part)")
    return b, n, m, h, d, dv


def _heads_first(x):  # [B, n, H, d] -> [B*H, n, d]
    b, n, h, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b * h, n, d)


def _heads_back(x, b, h):  # [B*H, n, d] -> [B, n, H, d]
    return x.reshape(b, h, x.shape[1], x.shape[2]).transpose(0, 2, 1, 3)


def _pad_rows(x, multiple):
    pad = (-x.shape[-2]) % multiple
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[-2] = (0, pad)
    return jnp.pad(x, widths)


# ----------------------------------------------------------------------------------------------------------------
# naive reference
# ----------------------------------------------------------------------------------------------------------------
def tensor_attention_reference(q, k1, k2, v1, v2, *, scale=None, is_causal=False, key_mask=None):
    """Naive Θ(n³d) evaluation materialising the [B, H, n, m, m] scores (tests, small n, the XLA peer in bench)."""
    b, n, m, h, d, dv = check_tensor_inputs(q, k1, k2, v1, v2, key_mask, is_causal)
    s = 1.0 / d if scale is None else scale
    logits = jnp.einsum("bihl,bjhl,bkhl->bhijk", q, k1, k2, preferred_element_type=jnp.float32) * s
    valid = jnp.ones((b, 1, n, m, m), bool)
    if is_causal:
        i = jnp.arange(n)[:, None, None]
        valid = valid & ((jnp.arange(m)[None, :, None] <= i) & (jnp.arange(m)[None, None, :] <= i))[None, None]
    if key_mask is not None:
        km = key_mask.astype(bool)
        valid = valid & (km[:, None, None, :, None] & km[:, None, None, None, :])
    logits = jnp.where(valid, logits, _NEG)
    p = jax.nn.softmax(logits.reshape(b, h, n, m * m), axis=-1).reshape(b, h, n, m, m)
    p = jnp.where(valid, p, 0.0)
    out = jnp.einsum("bhijk,bjhe,bkhe->bihe", p, v1.astype(jnp.float32), v2.astype(jnp.float32))
    return out.astype(q.dtype)


# ----------------------------------------------------------------------------------------------------------------
# exact path (pure JAX, flash-style tiles)
# ----------------------------------------------------------------------------------------------------------------
def _pair_mask(rows, cols_j, cols_k, causal, kmask_j, kmask_k):
    """[bq, bk, bk] validity of the pairs (j, k) for the query rows."""
    ok = (kmask_j[:, None] & kmask_k[None, :])[None]
    if causal:
        ok = ok & (cols_j[None, :, None] <= rows[:, None, None]) & (cols_k[None, None, :] <= rows[:, None, None])
    return ok


def _num_key_blocks(q0, bq, bk, nkb, causal):
    if not causal:
        return nkb
    return jnp.minimum(nkb, (q0 + bq - 1) // bk + 1)


def _exact_fwd_head(q, k1, k2, v1, v2, kmask, *, scale, causal, bq, bk):
    """One head. q [nq, d] (nq % bq == 0), k*/v* [m, .] (m % bk == 0), kmask [m] bool -> (O [nq, dv], lse [nq])."""
    nq, d = q.shape
    m, dv = v1.shape
    nkb = m // bk
    f32 = jnp.float32

    def qblock(qi):
        q0 = qi * bq
        qs = lax.dynamic_slice_in_dim(q, q0, bq).astype(f32) * scale
        rows = q0 + jnp.arange(bq)
        nb = _num_key_blocks(q0, bq, bk, nkb, causal)

        def jbody(jb, carry):
            j0 = jb * bk
            k1b = lax.dynamic_slice_in_dim(k1, j0, bk).astype(f32)
            v1b = lax.dynamic_slice_in_dim(v1, j0, bk).astype(f32)
            mj = lax.dynamic_slice_in_dim(kmask, j0, bk)
            qk1 = qs[:, None, :] * k1b[None]  # [bq, bk, d]

            def kbody(kb, carry):
                m_i, l_i, acc = carry
                k0 = kb * bk
                k2b = lax.dynamic_slice_in_dim(k2, k0, bk).astype(f32)
                v2b = lax.dynamic_slice_in_dim(v2, k0, bk).astype(f32)
                mk = lax.dynamic_slice_in_dim(kmask, k0, bk)
                ok = _pair_mask(rows, j0 + jnp.arange(bk), k0 + jnp.arange(bk), causal, mj, mk)
                s = jnp.where(ok, jnp.einsum("ijd,kd->ijk", qk1, k2b), _NEG)
                m_new = jnp.maximum(m_i, s.max(axis=(1, 2)))
                p = jnp.where(ok, jnp.exp(s - m_new[:, None, None]), 0.0)
                alpha = jnp.exp(m_i - m_new)
                l_i = l_i * alpha + p.sum(axis=(1, 2))
                pv2 = jnp.einsum("ijk,ke->ije", p, v2b)
                acc = acc * alpha[:, None] + jnp.einsum("ije,je->ie", pv2, v1b)
                return m_new, l_i, acc

            return lax.fori_loop(0, nb, kbody, carry)

        init = (jnp.full((bq,), -jnp.inf, f32), jnp.zeros((bq,), f32), jnp.zeros((bq, dv), f32))
        m_i, l_i, acc = lax.fori_loop(0, nb, jbody, init)
        l_safe = jnp.where(l_i > 0, l_i, 1.0)
        return acc / l_safe[:, None], m_i + jnp.log(l_safe)

    o, lse = lax.map(qblock, jnp.arange(nq // bq))
    return o.reshape(nq, dv), lse.reshape(nq)


def _exact_bwd_head(q, k1, k2, v1, v2, kmask, o, lse, do, *, scale, causal, bq, bk):
    """One head: the closed-form gradients (module docstring), tiles recomputed. Returns dq, dk1, dk2, dv1, dv2."""
    nq, d = q.shape
    m, dv = v1.shape
    nkb = m // bk
    f32 = jnp.float32
    delta = jnp.sum(do.astype(f32) * o.astype(f32), axis=-1)  # Δ_i = ⟨dO_i, O_i⟩

    def add_rows(acc, start, upd):
        return lax.dynamic_update_slice_in_dim(acc, lax.dynamic_slice_in_dim(acc, start, upd.shape[0]) + upd,
                                               start, 0)

    def qblock(carry, qi):
        q0 = qi * bq
        qb = lax.dynamic_slice_in_dim(q, q0, bq).astype(f32)
        qs = qb * scale
        dob = lax.dynamic_slice_in_dim(do, q0, bq).astype(f32)
        lseb = lax.dynamic_slice_in_dim(lse, q0, bq)
        db = lax.dynamic_slice_in_dim(delta, q0, bq)
        rows = q0 + jnp.arange(bq)
        nb = _num_key_blocks(q0, bq, bk, nkb, causal)

        def jbody(jb, c):
            dq, dk1, dk2, dv1, dv2 = c
            j0 = jb * bk
            k1b = lax.dynamic_slice_in_dim(k1, j0, bk).astype(f32)
            v1b = lax.dynamic_slice_in_dim(v1, j0, bk).astype(f32)
            mj = lax.dynamic_slice_in_dim(kmask, j0, bk)
            qk1 = qs[:, None, :] * k1b[None]  # [bq, bk, d], scaled
            dov1 = dob[:, None, :] * v1b[None]  # [bq, bk, dv]

            def kbody(kb, c2):
                dq, dk1j, dv1j, dk2, dv2 = c2
                k0 = kb * bk
                k2b = lax.dynamic_slice_in_dim(k2, k0, bk).astype(f32)
                v2b = lax.dynamic_slice_in_dim(v2, k0, bk).astype(f32)
                mk = lax.dynamic_slice_in_dim(kmask, k0, bk)
                ok = _pair_mask(rows, j0 + jnp.arange(bk), k0 + jnp.arange(bk), causal, mj, mk)
                s = jnp.einsum("ijd,kd->ijk", qk1, k2b)
                p = jnp.where(ok, jnp.exp(s - lseb[:, None, None]), 0.0)
                dp = jnp.einsum("ije,ke->ijk", dov1, v2b)
                ds = p * (dp - db[:, None, None])
                t = jnp.einsum("ijk,kd->ijd", ds, k2b)  # Σ_k dS_ijk K2_k
                dq = dq + scale * jnp.einsum("ijd,jd->id", t, k1b)
                dk1j = dk1j + scale * jnp.einsum("ijd,id->jd", t, qb)
                dk2 = add_rows(dk2, k0, jnp.einsum("ijk,ijd->kd", ds, qk1))
                pv2 = jnp.einsum("ijk,ke->ije", p, v2b)
                dv1j = dv1j + jnp.einsum("ije,ie->je", pv2, dob)
                dv2 = add_rows(dv2, k0, jnp.einsum("ijk,ije->ke", p, dov1))
                return dq, dk1j, dv1j, dk2, dv2

            zk, zv = jnp.zeros((bk, d), f32), jnp.zeros((bk, dv), f32)
            dq, dk1j, dv1j, dk2, dv2 = lax.fori_loop(0, nb, kbody, (dq, zk, zv, dk2, dv2))
            return dq, add_rows(dk1, j0, dk1j), dk2, add_rows(dv1, j0, dv1j), dv2

        dk1, dk2, dv1, dv2 = carry
        dq, dk1, dk2, dv1, dv2 = lax.fori_loop(0, nb, jbody, (jnp.zeros((bq, d), f32), dk1, dk2, dv1, dv2))
        return (dk1, dk2, dv1, dv2), dq

    init = (jnp.zeros((m, d), f32), jnp.zeros((m, d), f32), jnp.zeros((m, dv), f32), jnp.zeros((m, dv), f32))
    (dk1, dk2, dv1, dv2), dq = lax.scan(qblock, init, jnp.arange(nq // bq))
    return dq.reshape(nq, d), dk1, dk2, dv1, dv2


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _exact(q, k1, k2, v1, v2, kmask, scale, causal, bq, bk):
    return _exact_fwd(q, k1, k2, v1, v2, kmask, scale, causal, bq, bk)[0]


def _exact_fwd(q, k1, k2, v1, v2, kmask, scale, causal, bq, bk):
    fwd = functools.partial(_exact_fwd_head, scale=scale, causal=causal, bq=bq, bk=bk)
    o, lse = jax.vmap(fwd)(q, k1, k2, v1, v2, kmask)
    o = o.astype(q.dtype)
    return o, (q, k1, k2, v1, v2, kmask, o, lse)


def _exact_bwd(scale, causal, bq, bk, res, do):
    q, k1, k2, v1, v2, kmask, o, lse = res
    bwd = functools.partial(_exact_bwd_head, scale=scale, causal=causal, bq=bq, bk=bk)
    grads = jax.vmap(bwd)(q, k1, k2, v1, v2, kmask, o, lse, do)
    out = tuple(g.astype(x.dtype) for g, x in zip(grads, (q, k1, k2, v1, v2)))
    return out + (None,)


_exact.defvjp(_exact_fwd, _exact_bwd)


def _exact_xla(q, k1, k2, v1, v2, key_mask, scale, causal, block_q, block_k):
    """[B*H, n, d] inputs; pads n and m to the block sizes and masks the padding."""
    bh, n, _ = q.shape
    m = k1.shape[1]
    bq = min(block_q, n)
    bk = min(block_k, m)
    kmask = jnp.ones((bh, m), bool) if key_mask is None else key_mask
    qp = _pad_rows(q, bq)
    k1p, k2p, v1p, v2p = (_pad_rows(x, bk) for x in (k1, k2, v1, v2))
    kmask = jnp.pad(kmask, ((0, 0), (0, k1p.shape[1] - m)))
    o = _exact(qp, k1p, k2p, v1p, v2p, kmask, float(scale), bool(causal), bq, bk)
    return o[:, :n]


# ----------------------------------------------------------------------------------------------------------------
# poly path: monomial features and the Khatri–Rao identity
# ----------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _feature_tables(d: int, degree: int):
    """[local helper beside jaxmm.ops.polynomial] Index tables to build all monomials x^α (|α| ≤ g, in
    `multi_indices` order) degree by degree with one gather-multiply per degree: parent[α] = index of α − e_l,
    var[α] = l, for l the first index with α_l > 0; starts[t] = first row of total degree t."""
    exps = polynomial.multi_indices(d, degree)
    index = {tuple(a): i for i, a in enumerate(exps)}
    parent = np.zeros(exps.shape[0], np.int32)
    var = np.zeros(exps.shape[0], np.int32)
    for i, a in enumerate(exps):
        nz = np.nonzero(a)[0]
        if len(nz):
            b = a.copy()
            b[nz[0]] -= 1
            var[i], parent[i] = nz[0], index[tuple(b)]
    starts = [int(np.searchsorted(exps.sum(1), t)) for t in range(degree + 2)]
    return parent, var, starts


def _monomials(x, degree):
    """x [..., d] -> x^α [..., r] for all |α| ≤ degree (same order as polynomial.monomials), O(r) ops."""
    parent, var, starts = _feature_tables(x.shape[-1], degree)
    out = [jnp.ones(x.shape[:-1] + (1,), x.dtype)]
    for t in range(1, degree + 1):
        lo, hi = starts[t], starts[t + 1]
        prev = jnp.concatenate(out, axis=-1)
        out.append(jnp.take(prev, parent[lo:hi], axis=-1) * jnp.take(x, var[lo:hi], axis=-1))
    return jnp.concatenate(out, axis=-1)


def _feature_weights(d, degree, weight_power):
    return polynomial.multinomial_weights(polynomial.multi_indices(d, degree), 1.0) ** weight_power


def _features(x, degree, weight_power):
    """U = c ∘ x^α with c = (1/α!)^{weight_power}, x [..., d] -> [..., r] (the scale s^{|α|} is folded into x
    by the caller). Differentiated by JAX through the gather construction of `_monomials`: the transpose of
    each degree's gather is a scatter-add, so the backward is O(n·r) like the forward (measured 5-40x faster
    on CPU than a hand-written dx_l = Σ_α dU_α c_α α_l x^{α−e_l}, which is O(n·r·d))."""
    return _monomials(x, degree) * jnp.asarray(_feature_weights(x.shape[-1], degree, weight_power), x.dtype)


def _prefix(x, causal):
    """Σ_{j ≤ i} x_j (causal) or Σ_j x_j kept as a broadcastable leading 1 (non-causal)."""
    return jnp.cumsum(x, axis=0) if causal else jnp.sum(x, axis=0, keepdims=True)


def _prefix_adjoint(g, causal):
    """Adjoint of _prefix: reverse cumulative sum, or the sum over rows (broadcast back by the caller)."""
    return jnp.flip(jnp.cumsum(jnp.flip(g, 0), axis=0), 0) if causal else jnp.sum(g, axis=0, keepdims=True)


def _poly_core_fwd_parts(u1, u2, u3, v1, v2, causal):
    a, b = _prefix(u2, causal), _prefix(u3, causal)  # [n|1, r]
    if causal:
        A = _prefix(u2[:, :, None] * v1[:, None, :], True)  # [n, r, dv]
        Bm = _prefix(u3[:, :, None] * v2[:, None, :], True)
        W = A * Bm
        num = jnp.einsum("ir,ire->ie", u1, W)
    else:
        A, Bm = (u2.T @ v1)[None], (u3.T @ v2)[None]  # [1, r, dv]
        W = A * Bm
        num = u1 @ W[0]
    c = a * b
    z = jnp.sum(u1 * c, axis=-1)
    return a, b, c, A, Bm, W, num, z


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _poly_core(u1, u2, u3, v1, v2, causal):
    """One head: O = diag(z)⁻¹ U1 W with z = U1 (P(U2) ∘ P(U3)), W = P(U2 ⊗ V1) ∘ P(U3 ⊗ V2), P = prefix sum
    (causal) or total sum. u* [n, r], v* [n, dv] -> [n, dv]."""
    *_, num, z = _poly_core_fwd_parts(u1, u2, u3, v1, v2, causal)
    return num / z[:, None]


def _poly_core_fwd(u1, u2, u3, v1, v2, causal):
    *_, num, z = _poly_core_fwd_parts(u1, u2, u3, v1, v2, causal)
    o = num / z[:, None]
    return o, (u1, u2, u3, v1, v2, o, z)


def _poly_core_bwd(causal, res, do):
    u1, u2, u3, v1, v2, o, z = res
    a, b, c, A, Bm, W, _, _ = _poly_core_fwd_parts(u1, u2, u3, v1, v2, causal)
    dnum = do / z[:, None]
    dz = -jnp.sum(do * o, axis=-1) / z
    if causal:
        du1 = jnp.einsum("ie,ire->ir", dnum, W) + dz[:, None] * c
        dW = u1[:, :, None] * dnum[:, None, :]  # [n, r, dv]
    else:
        du1 = dnum @ W[0].T + dz[:, None] * c
        dW = (u1.T @ dnum)[None]  # already summed over rows: the adjoint of the total sum
    dc = u1 * dz[:, None] if causal else (u1.T @ dz)[None]
    dA, dB = dW * Bm, dW * A
    da, db = dc * b, dc * a
    if causal:
        dA, dB, da, db = (_prefix_adjoint(g, True) for g in (dA, dB, da, db))
    # rows of A = P(u2 ⊗ v1): dU2_j = Σ_e dA_j·e V1_je + da_j, dV1_j = Σ_r dA_jr· U2_jr (one shared dA if
    # non-causal: plain matmuls)
    if causal:
        du2, dv1 = jnp.einsum("jre,je->jr", dA, v1) + da, jnp.einsum("jre,jr->je", dA, u2)
        du3, dv2 = jnp.einsum("kre,ke->kr", dB, v2) + db, jnp.einsum("kre,kr->ke", dB, u3)
    else:
        du2, dv1 = v1 @ dA[0].T + da, u2 @ dA[0]
        du3, dv2 = v2 @ dB[0].T + db, u3 @ dB[0]
    return du1, du2, du3, dv1, dv2


_poly_core.defvjp(_poly_core_fwd, _poly_core_bwd)


def _poly_head(q, k1, k2, v1, v2, kmask, *, scale, causal, degree):
    """One head of the poly path; the weights s^{|α|}/α! are split evenly over the three factors
    (U_t = (s^{|α|}/α!)^{1/3} x^α) so the three feature maps have comparable magnitude in float32."""
    cs = scale ** (1.0 / 3.0)
    u1, u2, u3 = (_features(x * cs, degree, 1.0 / 3.0) for x in (q, k1, k2))
    km = kmask[:, None].astype(u2.dtype)
    return _poly_core(u1, u2 * km, u3 * km, v1, v2, causal)


def _poly(q, k1, k2, v1, v2, key_mask, scale, causal, degree):
    kmask = jnp.ones(k1.shape[:2], bool) if key_mask is None else key_mask
    f32 = jnp.float32
    head = functools.partial(_poly_head, scale=scale, causal=causal, degree=degree)
    o = jax.vmap(head)(q.astype(f32), k1.astype(f32), k2.astype(f32), v1.astype(f32), v2.astype(f32), kmask)
    return o.astype(q.dtype)


def poly_rank(d: int, degree: int) -> int:
    """r = C(d+g, g): the number of monomial features."""
    return math.comb(d + degree, degree)


def taylor_error_bound(beta, degree: int):
    """ε = e^{2β} β^{g+1}/(g+1)!: the largest relative error of the degree-g Taylor polynomial of exp on
    [−β, β] (Lagrange remainder e^ξ x^{g+1}/(g+1)! over exp(x) ≥ e^{−β}). The output error is ≤ 2ε/(1−ε)·max|V|."""
    beta = np.asarray(beta, np.float64)
    return np.exp(2 * beta) * beta ** (degree + 1) / math.factorial(degree + 1)


# ----------------------------------------------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------------------------------------------
def check_tensor_options(d: int, *, method, degree, scale, block_q, block_k) -> float:
    """Check method / degree / scale / tile sizes; returns the scale s (default 1/d)."""
    if method not in METHODS:
        fail("method", f"one of {METHODS}", repr(method))
    s = 1.0 / d if scale is None else float(scale)
    if not s > 0:
        fail("scale", "a positive number", scale)
    for name, v in (("block_q", block_q), ("block_k", block_k)):
        if not (isinstance(v, int) and v > 0):
            fail(name, "a positive int", v)
    if method == "poly" and not (isinstance(degree, (int, np.integer)) and degree >= 0):
        fail("degree", "a non-negative int for method='poly'", degree)
    if method == "exact" and degree is not None:
        fail("degree", "None for method='exact'", degree)
    return s


def tensor_attention(q, k1, k2, v1, v2, *, scale: float | None = None, method: str = "exact",
                     degree: int | None = None, is_causal: bool = False, key_mask=None, block_q: int = 64,
                     block_k: int = 64):
    """Tensor attention O_i = Σ_jk softmax_jk(s·Σ_l Q_il K1_jl K2_kl) V1_j∘V2_k (see the module docstring).

    q, k1, k2: [B, n|m, H, d]; v1, v2: [B, m, H, dv]. Returns [B, n, H, dv] in q's dtype.
    scale: s, default 1/d (the paper; 1/√d is the 2-simplicial convention).
    method: "exact" (flash-style tiles, custom VJP) or "poly" (degree-`degree` Taylor features, O(n·r·d)).
    is_causal: query i sees the pairs with j <= i and k <= i (needs n == m).
    key_mask: optional bool [B, m]; pairs with a masked j or k are left out (padding).
    block_q, block_k: tile sizes of the exact path. Plain XLA; the backend-dispatching version (Pallas kernel
    on GPU) is `jaxmm.attention.tensor_attention`.
    """
    b, n, m, h, d, dv = check_tensor_inputs(q, k1, k2, v1, v2, key_mask, is_causal)
    s = check_tensor_options(d, method=method, degree=degree, scale=scale, block_q=block_q, block_k=block_k)
    km = None if key_mask is None else jnp.repeat(jnp.asarray(key_mask, bool), h, axis=0)
    args = [_heads_first(x) for x in (q, k1, k2, v1, v2)]
    if method == "poly":
        out = _poly(*args, km, s, bool(is_causal), int(degree))
        return _heads_back(out, b, h)
    out = _exact_xla(*args, km, s, bool(is_causal), block_q, block_k)
    return _heads_back(out, b, h)


# ----------------------------------------------------------------------------------------------------------------
# the paper's training objective (Definition 3.8) and its gradient (Lemma 4.1 exact; the polynomial method fast)
# ----------------------------------------------------------------------------------------------------------------
def _check_loss_inputs(a1, a2, a3, a4, a5, x1, x2, x3, y, e):
    check_rank("a1", a1, 2, "[n, d]")
    n, d = a1.shape
    for name, a in (("a2", a2), ("a3", a3), ("a4", a4), ("a5", a5)):
        check_shape(name, a, (n, d), "[n, d] (like a1)")
    check_rank("x1", x1, 2, "[d, k]")
    check_shape("x1", x1, (d, None), "[d, k]")
    for name, x in (("x2", x2), ("x3", x3)):
        check_shape(name, x, x1.shape, "[d, k] (like x1)")
    check_rank("y", y, 2, "[d², dv]")
    check_shape("y", y, (d * d, None), "[d², dv]")
    check_shape("e", e, (n, y.shape[1]), "[n, dv]")
    return n, d


def _loss_exact(a1, a2, a3, a4, a5, x1, x2, x3, y, e, scale, bq, bk):
    """Two tiled passes. Pass 1 (online softmax): Z_i[b,c] = Σ_jk P_ijk A4_jb A5_kc, so O = Z·Y and
    lse. Pass 2: H = G·Yᵀ (G = O − E), dP_ijk = Σ_bc H_ibc A4_jb A5_kc, dS = P∘(dP − Δ), and
    R_i[b,c] = Σ_jk dS_ijk A2_jb A3_kc, so ∇_X = s·A1ᵀ R (= A1ᵀ F (A2⊗A3) with F = s·dS)."""
    f32 = jnp.float32
    n, d = a1.shape
    q = _pad_rows((a1 @ x1).astype(f32), bq) * scale
    k1, k2 = (_pad_rows((a @ x).astype(f32), bk) for a, x in ((a2, x2), (a3, x3)))
    a2p, a3p, a4p, a5p = (_pad_rows(a.astype(f32), bk) for a in (a2, a3, a4, a5))
    nq, m = q.shape[0], k1.shape[0]
    kvalid = jnp.arange(m) < n
    nkb = m // bk

    def tiles(qi, body, init):
        q0 = qi * bq
        qb = lax.dynamic_slice_in_dim(q, q0, bq)

        def jbody(jb, carry):
            j0 = jb * bk
            sl = lambda x: lax.dynamic_slice_in_dim(x, j0, bk)
            qk1 = qb[:, None, :] * sl(k1)[None]

            def kbody(kb, carry):
                k0 = kb * bk
                sk = lambda x: lax.dynamic_slice_in_dim(x, k0, bk)
                ok = (sl(kvalid)[:, None] & sk(kvalid)[None, :])[None]
                s = jnp.where(ok, jnp.einsum("ijl,kl->ijk", qk1, sk(k2)), _NEG)
                return body(carry, s, ok, sl, sk)

            return lax.fori_loop(0, nkb, kbody, carry)

        return lax.fori_loop(0, nkb, jbody, init)

    def pass1(qi):
        def body(carry, s, ok, sl, sk):
            m_i, l_i, z = carry
            m_new = jnp.maximum(m_i, s.max(axis=(1, 2)))
            p = jnp.where(ok, jnp.exp(s - m_new[:, None, None]), 0.0)
            alpha = jnp.exp(m_i - m_new)
            t = jnp.einsum("ijk,kc->ijc", p, sk(a5p))
            z = z * alpha[:, None, None] + jnp.einsum("ijc,jb->ibc", t, sl(a4p))
            return m_new, l_i * alpha + p.sum(axis=(1, 2)), z

        init = (jnp.full((bq,), -jnp.inf, f32), jnp.zeros((bq,), f32), jnp.zeros((bq, d, d), f32))
        m_i, l_i, z = tiles(qi, body, init)
        l_safe = jnp.where(l_i > 0, l_i, 1.0)
        return z / l_safe[:, None, None], m_i + jnp.log(l_safe)

    z, lse = lax.map(pass1, jnp.arange(nq // bq))
    z, lse = z.reshape(nq, d * d)[:n], lse.reshape(nq)
    o = z @ y.astype(f32)
    g = o - e.astype(f32)
    loss = 0.5 * jnp.sum(g * g)
    hmat = _pad_rows((g @ y.astype(f32).T).reshape(n, d * d), bq).reshape(nq, d, d)
    delta = jnp.pad(jnp.sum(o * g, axis=-1), (0, nq - n))

    def pass2(qi):
        q0 = qi * bq
        hb = lax.dynamic_slice_in_dim(hmat, q0, bq)
        lb, db = lax.dynamic_slice_in_dim(lse, q0, bq), lax.dynamic_slice_in_dim(delta, q0, bq)

        def body(r, s, ok, sl, sk):
            p = jnp.where(ok, jnp.exp(s - lb[:, None, None]), 0.0)
            dp = jnp.einsum("ijc,kc->ijk", jnp.einsum("ibc,jb->ijc", hb, sl(a4p)), sk(a5p))
            ds = p * (dp - db[:, None, None])
            return r + jnp.einsum("ijc,jb->ibc", jnp.einsum("ijk,kc->ijc", ds, sk(a3p)), sl(a2p))

        return tiles(qi, body, jnp.zeros((bq, d, d), f32))

    r = lax.map(pass2, jnp.arange(nq // bq)).reshape(nq, d * d)[:n]
    grad = scale * (a1.astype(f32).T @ r)
    return loss, grad


def _loss_poly(a1, a2, a3, a4, a5, x1, x2, x3, y, e, scale, degree):
    """The polynomial method: exp(S) ≈ U1(U2⊘U3)ᵀ, then every n² object is a sum of rank-one tensors and
    Σ_ijk T_ijk A1_ia A2_jb A3_kc of a CP tensor T = Σ_t a_t⊗b_t⊗c_t is Σ_t (A1ᵀa_t)⊗(A2ᵀb_t)⊗(A3ᵀc_t).
    S∘(G Vᵀ) has the factors (Ũ1_α H_bc, U2_α A4_b, U3_α A5_c) with H = G Yᵀ, and diag(Δ)S the factors
    (Δ Ũ1_α, U2_α, U3_α), Ũ1 = diag(z)⁻¹U1. Time O(n·r·d³ + r·d⁵), no n² object."""
    f32 = jnp.float32
    n, d = a1.shape
    a1, a2, a3, a4, a5, y, e = (x.astype(f32) for x in (a1, a2, a3, a4, a5, y, e))
    cs = scale ** (1.0 / 3.0)
    u1, u2, u3 = (_features(a @ x.astype(f32) * cs, degree, 1.0 / 3.0) for a, x in ((a1, x1), (a2, x2), (a3, x3)))
    z = u1 @ (u2.sum(0) * u3.sum(0))
    u1n = u1 / z[:, None]
    p2 = jnp.einsum("jr,jb,jx->rbx", u2, a4, a2)  # Σ_j U2_jα A4_jb A2_jx
    p3 = jnp.einsum("kr,kc,ky->rcy", u3, a5, a3)
    mmat = jnp.einsum("rb,rc->rbc", u2.T @ a4, u3.T @ a5).reshape(-1, d * d)  # (U2⊘U3)ᵀ(A4⊗A5)
    o = u1n @ mmat @ y
    g = o - e
    loss = 0.5 * jnp.sum(g * g)
    h = (g @ y.T).reshape(n, d, d)
    p1 = jnp.einsum("ira,ibc->rabc", u1n[:, :, None] * a1[:, None, :], h)
    term1 = jnp.einsum("racy,rcx->axy", jnp.einsum("rabc,rcy->raby", p1, p3), p2)
    delta = jnp.sum(o * g, axis=-1)
    term2 = jnp.einsum("ra,rx,ry->axy", (u1n * delta[:, None]).T @ a1, u2.T @ a2, u3.T @ a3)
    return loss, scale * (term1 - term2).reshape(d, d * d)


def tensor_attention_loss_grad(a1, a2, a3, a4, a5, x1, x2, x3, y, e, *, method: str = "exact",
                               degree: int | None = None, scale: float | None = None,
                               block_q: int = 128, block_k: int = 32):
    """The paper's objective (Definition 3.8, as written in PAPERS.md §10) and its gradient in X:

        L(X) = ½‖D(X)⁻¹ exp(s·A1 X (A2⊗A3)ᵀ)(A4⊗A5) Y − E‖²_F,   X = X1 (X2⊘X3)ᵀ ∈ R^{d×d²},
        ∇_X L = A1ᵀ F (A2⊗A3),  F = s[P∘(G Vᵀ) − diag(rowsum(O∘G)) P],  G = O − E,  V = (A4⊗A5)Y,

    evaluated at the X given by its factors (so Q = A1X1, K1 = A2X2, K2 = A3X3: the scores are tensor attention's).
    [reconstruction: Y is taken as a general [d², dv] matrix (the Khatri–Rao case Y = Y1⊘Y2 included) and X is
    passed by its factors, which is what the polynomial method needs.]
    a1..a5: [n, d]; x1, x2, x3: [d, k]; y: [d², dv]; e: [n, dv]. Returns (loss, grad [d, d²]) with grad's column
    b·d + c ↔ (A2⊗A3)'s column (b, c) (b outer).
    method "exact": Lemma 4.1 in flash-style tiles, O(n³d²) time, O(n·d² + tiles) memory;
    method "poly": the almost-linear algorithm with degree-`degree` Taylor features (error as for tensor_attention).
    """
    n, d = _check_loss_inputs(a1, a2, a3, a4, a5, x1, x2, x3, y, e)
    if method not in METHODS:
        fail("method", f"one of {METHODS}", repr(method))
    s = 1.0 / d if scale is None else float(scale)
    if not s > 0:
        fail("scale", "a positive number", scale)
    if method == "poly":
        if not (isinstance(degree, (int, np.integer)) and degree >= 0):
            fail("degree", "a non-negative int for method='poly'", degree)
        return _loss_poly(a1, a2, a3, a4, a5, x1, x2, x3, y, e, s, int(degree))
    return _loss_exact(a1, a2, a3, a4, a5, x1, x2, x3, y, e, s, min(block_q, n), min(block_k, n))
