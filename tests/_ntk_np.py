"""Float64 NumPy evaluations of softmax attention and NTK-Attention (2406.14036), written from the formulas,
for the ops and kernel tests. Layout [B, L, H, d]; k, v [B, L', Hkv, d]; query head h reads kv head h // (H/Hkv)."""
import numpy as np


def phi(x, d):
    x = x / d ** 0.25
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))) + 1.0


def _allowed(b, h, lq, lk, is_causal, mask):
    allowed = np.ones((b, h, lq, lk), bool)
    if is_causal:
        allowed &= np.tril(np.ones((lq, lk), bool), k=lk - lq)   # bottom-right aligned
    if mask is not None:
        allowed &= np.broadcast_to(np.asarray(mask, bool), allowed.shape)
    return allowed


def attention(q, k, v, *, is_causal=False, scale=None, mask=None, z=None, kvec=None, k_prefix=None,
              v_prefix=None):
    """Returns (out, lse) in float64. With z, kvec: NTK-Attention, (Σ e^{s}v + φ(q)Z) / (Σ e^{s} + φ(q)·|k|)
    (lse then is that of the real keys). With k_prefix, v_prefix: explicit prefix attention (prefix visible to
    every query). Every row is shifted by its own maximum, which cancels exactly in the ratio."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, lq, h, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    g = h // hkv
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    allowed = _allowed(b, h, lq, lk, is_causal, mask)
    out = np.zeros((b, lq, h, d))
    lse = np.full((b, lq, h), -np.inf)
    for bi in range(b):
        for hi in range(h):
            kk, vv = k[bi, :, hi // g], v[bi, :, hi // g]
            s = np.where(allowed[bi, hi], q[bi, :, hi] @ kk.T * scale, -np.inf)
            extra_logits, extra_num = [], []
            if k_prefix is not None:
                kp = np.asarray(k_prefix, np.float64)[min(bi, k_prefix.shape[0] - 1), :, hi // g]
                vp = np.asarray(v_prefix, np.float64)[min(bi, v_prefix.shape[0] - 1), :, hi // g]
                s = np.concatenate([q[bi, :, hi] @ kp.T * scale, s], axis=1)
                kv_vals = np.concatenate([vp, vv], axis=0)
            else:
                kv_vals = vv
            m = np.max(s, axis=1)
            w = c = None
            if z is not None:
                pq = phi(q[bi, :, hi], d)
                c = pq @ np.asarray(z, np.float64)[hi]
                w = pq @ np.abs(np.asarray(kvec, np.float64)[hi])
                with np.errstate(divide="ignore"):
                    m = np.maximum(m, np.log(w))
            m = np.where(np.isfinite(m), m, 0.0)
            p = np.exp(s - m[:, None])
            num = p @ kv_vals
            den = p.sum(1)
            if z is not None:
                num = num + np.exp(-m)[:, None] * c
                den = den + np.exp(-m) * w
            out[bi, :, hi] = np.where(den[:, None] > 0, num / np.where(den > 0, den, 1.0)[:, None], 0.0)
            with np.errstate(divide="ignore"):
                lse[bi, :, hi] = m + np.log(p.sum(1))
    return out, lse


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
