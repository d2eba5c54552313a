"""Every operation of GPT-2 as a forward/backward pair.

`op_forward(inputs...) -> (out, cache)` computes the op and keeps exactly what its backward
needs; `op_backward(dout, cache) -> grads` turns the gradient of the loss with respect to
`out` into gradients with respect to each input. The array module comes from the data, so
every line runs on NumPy and on CuPy.

Shapes: B batch, T sequence length, C channels (n_embd), H heads, D = C / H head size,
V vocabulary size, N = B * T rows when the batch and time axes are flattened.
"""

import ctypes
import math

import numpy as np

from .backend import get_array_module, scatter_add
from .dtypes import float32_if_half


# --- where the arrays come from -----------------------------------------------------------

def keep_freed_memory():
    """Ask the C allocator (glibc's malloc) to keep memory that NumPy frees, for reuse.

    A training step allocates and frees arrays of the same sizes every step. By default glibc
    hands large freed blocks back to the operating system (munmap, heap trimming), so the next
    step's arrays are faulted in again page by page: kernel time, which a profile shows as
    system time (a quarter of a step at nanoGPT's small shapes). Keeping the blocks makes each
    step reuse the previous step's pages; the process's memory stays at its peak instead of
    shrinking between steps. Returns True when the allocator took it (Linux with glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False                        # not glibc: nothing to tell it
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    # blocks up to 1 GB from the reusable heap (32 MB, glibc's own cap, where it refuses more),
    # and never trim the heap's free top back to the system
    took = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) or libc.mallopt(M_MMAP_THRESHOLD, 1 << 25)
    return bool(took and libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))


CACHE_SLICE = 1 << 16   # numbers per slice: a few slices of 256 KB stay in a core's L2 cache


def cache_slices(xp, n, row_len=1):
    """Ranges (a, b) that cover rows 0..n-1 of row_len numbers each (flat arrays: row_len 1),
    for a chain of elementwise or row-wise passes (a softmax, a normalisation).

    On the CPU each pass over a large array streams it from memory; run the whole chain on one
    slice of about CACHE_SLICE numbers (whole rows, at least one) at a time and only the first
    pass does (the rest find the slice in cache). On a GPU every pass is a kernel launch: there
    it is one range, everything.
    """
    step = max(1, CACHE_SLICE // max(row_len, 1)) if xp.__name__ == "numpy" else max(n, 1)
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def slice_scratch(xp, slices, dtype):
    """An empty array as long as the longest of `slices` (the first): scratch for any one of them."""
    return xp.empty(slices[0][1] if slices else 0, dtype=dtype)


# --- token and position embedding ---------------------------------------------------------

def embedding_forward(ids, W):
    """Look up rows of a table. ids int (...), W (V, C) -> out (..., C)."""
    return W[ids], (ids, W.shape)


def embedding_backward(dout, cache, into=None):
    """dout (..., C) -> dW (V, C).

    out[i] = W[ids[i]], so dW[v] = sum of dout[i] over every i with ids[i] == v. A plain
    `dW[ids] += dout` keeps only one of the repeated ids; scatter_add sums them all.
    into: a (V, C) gradient to add to, in place, and return (the tied wte's LM-head share):
    the same sum as `into + embedding_backward(dout, cache)` without a second (V, C) array.
    """
    ids, shape = cache
    xp = get_array_module(dout)
    dW = xp.zeros(shape, dtype=dout.dtype) if into is None else into
    scatter_add(dW, ids.reshape(-1), dout.reshape(-1, shape[1]))
    return dW


# --- layer norm ---------------------------------------------------------------------------

def layernorm_forward(x, g, b=None, eps=1e-5):
    """Normalise each row to mean 0, variance 1, then scale and shift.

    x (..., C), g (C,), b (C,) or None (no shift, as nanoGPT's bias=False) -> out (..., C).
    Variance is the biased one (divide by C), eps sits inside the square root, as in GPT-2:
        xc = x - mean(x),  rstd = 1 / sqrt(mean(xc^2) + eps),  n = xc * rstd,  out = n * g + b
    Written with two full-size arrays (xc, which becomes n in place, and out, which first
    holds xc^2): every fresh array is memory the next step has to fault in again.
    """
    xp = get_array_module(x)
    xs = float32_if_half(x)
    avg = xp.full(xs.shape[-1], 1.0 / xs.shape[-1], dtype=xs.dtype)
    # row means as products with avg = (1/C, ..., 1/C): BLAS takes them 1.5-5x faster than mean()
    xc = xs - (xs @ avg)[..., None]                              # x - mean(x)
    out = xp.multiply(xc, xc, dtype=xs.dtype)                   # xc^2, in out's buffer for now
    rstd = 1.0 / ((out @ avg)[..., None] + eps) ** 0.5
    xc *= rstd                                                  # xc is now n
    n = xc.astype(x.dtype, copy=False)
    out = xp.multiply(n, g, out=out if out.dtype == x.dtype else None)
    if b is not None:
        out += b
    return out, (n, rstd, g, b is not None)


def layernorm_backward(dout, cache):
    """dout (..., C) -> dx (..., C), dg (C,), db (C,) (None for a layer norm without shift).

    out = n * g + b with n = (x - mean) * rstd, so dg = sum of dout * n and db = sum of dout
    over every row; and with dn = dout * g, differentiating n through mean and rstd gives
        dx = rstd * (dn - mean(dn) - n * mean(dn * n))      (means over the C axis)
    The row means come from arrays at hand: mean(dn) = dout @ (g / C) and
    mean(dn * n) = (dout * n) @ (g / C), the product that dg sums anyway.
    """
    n, rstd, g, has_bias = cache
    xp = get_array_module(dout)
    C = dout.shape[-1]
    d = float32_if_half(dout)
    nf = float32_if_half(n)
    tmp = d * nf                                                # dout * n
    # sums over rows (dg, db) and means over C as products with vectors: BLAS, 1.5-5x faster than sum()
    rows = xp.ones(tmp.size // C, dtype=tmp.dtype)
    dg = (rows @ tmp.reshape(-1, C)).astype(g.dtype, copy=False)
    db = (rows @ d.reshape(-1, C)).astype(g.dtype, copy=False) if has_bias else None
    gc = g.astype(tmp.dtype) / C
    m2 = (tmp @ gc)[..., None]                                  # mean(dn * n)
    m1 = (d @ gc)[..., None]                                    # mean(dn)
    dn = d * g                                                  # dn
    xp.multiply(nf, m2, out=tmp)
    dn -= tmp
    dn -= m1
    dn *= rstd
    return dn.astype(dout.dtype, copy=False), dg, db


# --- linear (GPT-2's Conv1D: W is (in, out), so y = x @ W + b) -----------------------------

FEW_ROWS = 32   # up to this many rows, linear_forward multiplies in the transposed order


def linear_forward(x, W, b=None):
    """x (..., in), W (in, out), b (out,) or None -> out (..., out).

    Plainly out = x @ W + b. The leading axes are flattened first so that the whole batch is
    one matrix product: one pass over W, not one per batch row (that would read W B times
    while decoding). With 2 to FEW_ROWS rows the same product is taken as (W^T x^T)^T.
    """
    xp = get_array_module(x)
    lead, x2 = x.shape[:-1], x.reshape(-1, x.shape[-1])
    if 1 < x2.shape[0] <= FEW_ROWS:
        # a few rows (batched decoding): OpenBLAS computes (W^T x^T)^T 15-30% faster than x W
        out = xp.ascontiguousarray((W.T @ x2.T).T)
    else:
        out = x2 @ W
    if b is not None:
        out += b
    return out.reshape(*lead, W.shape[1]), (x, W, b is not None)


def linear_backward(dout, cache, param_grads=True):
    """dout (..., out) -> dx (..., in), dW (in, out), db (out,) or None.

    y = x W + b  =>  dx = dy W^T,  dW = x^T dy,  db = sum of dy over rows.
    With param_grads=False (a frozen layer) only dx is computed; dW and db are None.
    """
    x, W, has_bias = cache
    xp = get_array_module(dout)
    d2 = dout.reshape(-1, dout.shape[-1])
    dx = (d2 @ W.T).reshape(x.shape)
    if not param_grads:
        return dx, None, None
    dW = x.reshape(-1, x.shape[-1]).T @ d2
    db = xp.ones(d2.shape[0], dtype=d2.dtype) @ d2 if has_bias else None   # = d2.sum(axis=0); BLAS is faster
    return dx, dW, db


# --- GELU, tanh approximation (Hugging Face's "gelu_new") ----------------------------------

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


def gelu_forward(x):
    """gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3).  x (...) -> (...).

    Plainly:  t = tanh(sqrt(2/pi) * (x + 0.044715 * x * x * x));  out = 0.5 * x * (1 + t)
    computed below in the same order (so to the same bits) in two arrays, t and out, instead of
    eight temporaries: GELU's arrays are the widest of a block (4C), each one memory to fill.
    """
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    t, out = xp.empty_like(x), xp.empty_like(x)
    xf, tf, of = x.reshape(-1), t.reshape(-1), out.reshape(-1)
    for a, b in cache_slices(xp, x.size):   # the 9 passes slice by slice, in cache (CPU)
        xs, ts, os = xf[a:b], tf[a:b], of[a:b]
        xp.multiply(xs, _GELU_A, out=ts)
        ts *= xs
        ts *= xs
        ts += xs
        ts *= _GELU_C                       # u
        xp.tanh(ts, out=ts)                 # t = tanh(u), kept for the backward
        xp.add(ts, 1.0, out=os)
        os *= xs
        os *= 0.5
    return out, (x, t)


def gelu_backward(dout, cache):
    """dout (...) -> dx (...).

    d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx,  du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2),
    with t = tanh(u) reused from the forward. Written with 1 - t^2 (never 1/cosh^2, which
    overflows for large |x|). Plainly:
        du = sqrt(2/pi) * (1 + 3 * 0.044715 * x * x)
        dx = dout * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)
    computed below as 0.5 dout (1 + t) (1 + x (1 - t) du), since 1 - t^2 = (1 - t)(1 + t): the
    same number in 11 passes instead of 13, in two arrays, g and s.
    """
    x, t = cache
    xp = get_array_module(x)
    dout = xp.ascontiguousarray(dout)
    slices = cache_slices(xp, x.size)        # the 11 passes slice by slice, in cache (CPU)
    g, s = xp.empty_like(x), slice_scratch(xp, slices, x.dtype)
    xf, tf, df, gf = x.reshape(-1), t.reshape(-1), dout.reshape(-1), g.reshape(-1)
    for a, b in slices:
        xs, ts, gs, ss = xf[a:b], tf[a:b], gf[a:b], s[:b - a]
        xp.multiply(xs, xs, out=ss)
        ss *= 3 * _GELU_A * _GELU_C
        ss += _GELU_C                       # du/dx
        xp.subtract(1.0, ts, out=gs)
        gs *= xs
        gs *= ss
        gs += 1.0                           # 1 + x (1 - t) du
        xp.add(ts, 1.0, out=ss)
        gs *= ss                            # (1 + t) (1 + x (1 - t) du)
        gs *= df[a:b]
        gs *= 0.5
    return g


# --- GELU, exact (erf) form, as torch.nn.GELU() and nanoGPT use -----------------------------

# Abramowitz & Stegun 7.1.26, for z >= 0:  erf(z) ~ 1 - P(t) exp(-z^2),  t = 1 / (1 + p z),
# P(t) = a1 t + a2 t^2 + ... + a5 t^5, absolute error <= 1.5e-7 (about one float32 rounding
# step near 1). NumPy has no erf of its own and picogpt depends on nothing beyond it.
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf(z):
    """The error function of an array, to within 1.5e-7 (A&S 7.1.26; erf(-z) = -erf(z))."""
    return _erf_parts(z)[0]


def _erf_parts(z):
    """(erf(z), d erf / dz) of the approximation above: the derivative of the formula itself,

        d/dz [1 - P(t) e^{-z^2}] = e^{-z^2} (2 z P(t) + p t^2 P'(t))     (z >= 0; even in z)

    so that a gradient check of anything built on it agrees to float64 rounding, not to 1e-7.
    It differs from the true derivative 2/sqrt(pi) e^{-z^2} by less than 1e-5.
    """
    xp = get_array_module(z)
    a = xp.abs(z)
    t = 1.0 / (1.0 + _ERF_P * a)
    P, dP = xp.zeros_like(t), xp.zeros_like(t)
    for a_k in reversed(_ERF_A):            # Horner: P = t (a1 + t (a2 + ...)), and P' beside it
        inner = P + a_k
        dP = dP * t + inner                 # (inner * t)' = inner' t + inner
        P = inner * t
    e = xp.exp(-a * a)
    return xp.sign(z) * (1.0 - P * e), e * (2.0 * a * P + _ERF_P * t * t * dP)


_SQRT1_2 = math.sqrt(0.5)


def gelu_exact_forward(x):
    """gelu(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt(2))).  x (...) -> (...).

    Phi is the standard normal distribution function. GPT-2 used the tanh approximation
    (gelu_forward), which differs from this by up to ~5e-4; nanoGPT and torch's nn.GELU()
    use this one. The forward has the pieces of the derivative at hand, so it keeps the
    derivative itself, d = Phi(x) + 0.5 x erf'(z) / sqrt(2), for the backward. Plainly, with
    z = x / sqrt(2):
        erf_z, derf_z = _erf_parts(z)
        phi = 0.5 * (1 + erf_z);  out = x * phi;  d = phi + 0.5 * x * derf_z / sqrt(2)
    computed below with _erf_parts' formulas written out in place (one scratch array per
    quantity, slice by slice), not the ~40 full-size temporaries of the plain form.
    erf' there is the derivative of the approximation's own formula, which a gradient check
    in float64 needs; below float64 the true one, 2/sqrt(pi) e^{-z^2} (torch's), is used
    instead: the two differ by less than 1e-5 (~1e-6 in d), and it costs 14 passes fewer.
    """
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    out, d = xp.empty_like(x), xp.empty_like(x)
    xf, of, df = x.reshape(-1), out.reshape(-1), d.reshape(-1)
    slices = cache_slices(xp, x.size)
    own_derivative = x.dtype == np.float64
    a, t, P, e = (slice_scratch(xp, slices, x.dtype) for _ in range(4))
    dP = slice_scratch(xp, slices, x.dtype) if own_derivative else None
    a1, a2, a3, a4, a5 = _ERF_A
    for lo, hi in slices:
        xs, n = xf[lo:hi], hi - lo
        a_, t_, P_, e_ = a[:n], t[:n], P[:n], e[:n]
        xp.abs(xs, out=a_)
        a_ *= _SQRT1_2                                   # |z|
        xp.multiply(a_, _ERF_P, out=t_)
        t_ += 1.0
        xp.reciprocal(t_, out=t_)                        # t = 1 / (1 + p |z|)
        xp.multiply(t_, a5, out=P_)                      # P = t (a1 + t (a2 + t (a3 + t (a4 + t a5))))
        for a_k in (a4, a3, a2, a1):
            P_ += a_k
            P_ *= t_
        xp.multiply(a_, a_, out=e_)
        e_ *= -1.0
        xp.exp(e_, out=e_)                               # e^{-z^2}
        ds = df[lo:hi]
        if own_derivative:
            dP_ = dP[:n]
            xp.multiply(t_, 5 * a5, out=dP_)             # P' = a1 + t (2 a2 + t (3 a3 + t (4 a4 + t 5 a5)))
            for k, a_k in ((4, a4), (3, a3), (2, a2)):
                dP_ += k * a_k
                dP_ *= t_
            dP_ += a1
            dP_ *= t_
            dP_ *= t_
            dP_ *= _ERF_P                                # p t^2 P'
            a_ *= 2.0
            a_ *= P_
            dP_ += a_
            dP_ *= e_                                    # erf'(z) = e^{-z^2} (2 |z| P + p t^2 P')
            xp.multiply(dP_, xs, out=ds)
            ds *= 0.5 * _SQRT1_2                         # 0.5 x erf'(z) / sqrt(2)
        else:
            xp.multiply(e_, xs, out=ds)
            ds *= 1.0 / math.sqrt(2.0 * math.pi)         # x e^{-x^2/2} / sqrt(2 pi), the same with the true erf'
        P_ *= e_                                         # 1 - erf(|z|)
        xp.multiply(P_, -0.5, out=t_)
        t_ += 0.5                                        # 0.5 erf(|z|)
        t_ *= xp.sign(xs, out=e_)                        # 0.5 erf(z), as erf(-z) = -erf(z)
        t_ += 0.5                                        # Phi(x) = 0.5 (1 + erf(z))
        xp.multiply(xs, t_, out=of[lo:hi])               # out = x Phi(x)
        ds += t_                                         # d = Phi(x) + 0.5 x erf'(z) / sqrt(2)
    return out, d


def gelu_exact_backward(dout, d):
    """dout (...) -> dx (...) = dout * d, with d the derivative kept by the forward:

    d/dx = 0.5 (1 + erf(z)) + 0.5 x erf'(z) / sqrt(2),  z = x / sqrt(2)
    (the true erf'(z) is 2/sqrt(pi) e^{-z^2}, so the second term is x times the normal density;
    here erf' is that of the approximation the forward computed).
    """
    return dout * d


# --- softmax ------------------------------------------------------------------------------

def softmax_forward(x, overwrite=False):
    """Softmax over the last axis. x (..., K) -> p (..., K).

    Subtracting the row max changes nothing mathematically and keeps exp() from overflowing.
    Entries that are -inf (masked) become exactly 0. overwrite=True lets a caller that no
    longer needs x (attention's scores) have p written into x's buffer.
    """
    xp = get_array_module(x)
    xs = float32_if_half(x)
    own = overwrite or xs is not x           # a float16 x was copied to float32: that copy is ours
    e = xp.subtract(xs, xs.max(axis=-1, keepdims=True), out=xs if own else None)
    xp.exp(e, out=e)                         # in place: one (..., K) buffer, not three
    e /= e.sum(axis=-1, keepdims=True)
    p = e.astype(x.dtype, copy=False)
    return p, p


def softmax_backward(dout, p, overwrite=False):
    """dout (..., K) -> dx (..., K).

    dp_i/dx_j = p_i (delta_ij - p_j)  =>  dx = p * (dout - sum(dout * p))   (sum over the K axis).
    overwrite=True writes dx into dout's buffer (for a caller that owns dout).
    """
    xp = get_array_module(p)
    s = (dout * p).sum(axis=-1, keepdims=True)
    dx = xp.subtract(dout, s, out=dout if overwrite else None)
    dx *= p
    return dx


# --- dropout ------------------------------------------------------------------------------

def dropout_forward(x, rate, rng):
    """Zero each entry with probability `rate`, scale the rest by 1/(1-rate). x (...) -> (...).

    Inverted dropout: the expectation is unchanged, so inference needs no rescaling. With
    rate 0 or no rng (inference) it is the identity and keeps no mask.
    """
    if not rate or rng is None:
        return x, None
    keep = rng.random(x.shape, dtype=np.float32) >= rate
    scale = 1.0 / (1.0 - rate)
    return x * keep * scale, (keep, scale)


def dropout_backward(dout, cache):
    """dout (...) -> dx (...): the same mask and scale as the forward."""
    if cache is None:
        return dout
    keep, scale = cache
    return dout * keep * scale


# --- residual connection ------------------------------------------------------------------

def residual_forward(x, fx):
    """The residual stream: out = x + f(x). Both (B, T, C)."""
    return x + fx, None


def residual_backward(dout, cache=None):
    """An add copies its gradient to both inputs: (dx, dfx) = (dout, dout)."""
    return dout, dout


# --- causal multi-head self-attention -----------------------------------------------------

def split_heads(x, n_head):
    """(B, T, C) -> (B, H, T, D): head h owns channels h*D .. (h+1)*D - 1."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, H, T, D) -> (B, T, C): the inverse of split_heads (and its backward)."""
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def causal_mask(xp, t_query, t_key):
    """(Tq, Tk) bool, True where query i may see key j: j <= i + (Tk - Tq).

    The queries are the last Tq of the Tk positions (Tq < Tk while decoding with a KV cache).
    """
    return xp.tri(t_query, t_key, k=t_key - t_query, dtype=bool)


def attention_forward(q, k, v, mask=None, dropout=0.0, rng=None):
    """Scaled dot-product attention, one softmax per head and query.

    q (B, H, Tq, D), k and v (B, H, Tk, D), mask bool broadcastable to (B, H, Tq, Tk)
    (True = may attend; None = attend everywhere) -> out (B, H, Tq, D).
        out = softmax(q k^T / sqrt(D) + mask) v
    Masked scores are set to -inf with `where` (never an additive -1e10, which overflows in
    float16); every query must be allowed at least one key.
    """
    xp = get_array_module(q)
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q * scale) @ k.swapaxes(-1, -2)     # scaling q is cheaper than scaling q k^T
    if mask is not None:
        xp.copyto(scores, -xp.inf, where=~mask)   # in place
    p, p_cache = softmax_forward(scores, overwrite=True)   # p in the scores' buffer
    pd, d_cache = dropout_forward(p, dropout, rng)
    return pd @ v, (q, k, v, p_cache, pd, d_cache, scale)


def attention_backward(dout, cache):
    """dout (B, H, Tq, D) -> dq, dk, dv (shapes of q, k, v).

    out = P v           =>  dP = dout v^T,  dv = P^T dout
    S = q k^T * scale   =>  dq = dS k * scale,  dk = dS^T q * scale
    and dS comes from dP through the softmax backward (masked entries have P = 0, so dS = 0).
    Below, `ds` already includes the factor `scale`: plainly, ds = softmax_backward(dp, P) * scale,
    written in place in dp's buffer (a (B, H, Tq, Tk) array this function owns).
    """
    q, k, v, p_cache, pd, d_cache, scale = cache
    dv = pd.swapaxes(-1, -2) @ dout
    dpd = dout @ v.swapaxes(-1, -2)
    dp = dropout_backward(dpd, d_cache)
    ds = softmax_backward(dp, p_cache, overwrite=True)
    ds *= scale
    dq = ds @ k
    dk = ds.swapaxes(-1, -2) @ q
    return dq, dk, dv


CAUSAL_ROWS = 64        # queries per block in causal_attention_forward on the CPU: a block's scores stay in cache
GPU_CAUSAL_ROWS = 256   # on a GPU, where each block costs ~40 kernel launches whatever its size: fewer, larger


def causal_attention_forward(q, k, v, rows=None):
    """attention_forward(q, k, v, causal_mask(xp, T, T)), `rows` queries (default: CAUSAL_ROWS,
    GPU_CAUSAL_ROWS on a GPU) at a time.

    q, k, v (B, H, T, D) -> out (B, H, T, D). Queries s..e-1 may see keys 0..e-1 only, so each
    block of queries is scored against those keys alone: the scores above the diagonal, which
    the mask would set to -inf, are never computed (at T = 4 * rows, 10 of the 16 blocks of
    scores are computed).
    The maths per block is attention_forward's: softmax(q k^T / sqrt(D), masked) v.
    """
    xp = get_array_module(q)
    rows = rows or (CAUSAL_ROWS if xp.__name__ == "numpy" else GPU_CAUSAL_ROWS)
    T, scale = q.shape[2], 1.0 / math.sqrt(q.shape[-1])
    # q scaled once, k and v copied: contiguous (B, H, T, D) arrays, on which the batched
    # products run ~20% faster than on strided views into qkv
    qs = xp.empty(q.shape, dtype=q.dtype)
    xp.multiply(q, scale, out=qs)
    k, v = xp.ascontiguousarray(k), xp.ascontiguousarray(v)
    out, probs = xp.empty_like(qs), []
    for s in range(0, T, rows):
        e = min(s + rows, T)
        scores = qs[:, :, s:e] @ k[:, :, :e].swapaxes(-1, -2)          # (B, H, e - s, e)
        xp.copyto(scores, -xp.inf, where=~causal_mask(xp, e - s, e))   # query s + i sees keys <= s + i
        p, _ = softmax_forward(scores, overwrite=True)
        xp.matmul(p, v[:, :, :e], out=out[:, :, s:e])
        probs.append(p)
    return out, (qs, k, v, out, probs, scale)


def causal_attention_backward(dout, cache):
    """dout (B, H, T, D) -> dq, dk, dv (B, H, T, D): attention_backward, block by block.

    A block of queries s..e-1 reaches keys and values 0..e-1 only, so it adds to dk and dv there:
        dv[:e] += P^T dout[s:e],   dS = P * (dP - rowsum(dP * P)),  dP = dout[s:e] v[:e]^T,
        dq[s:e] = dS k[:e] * scale,   dk[:e] += dS^T (q[s:e] * scale)
    The softmax backward's rowsum(dP * P) over keys equals rowsum(dout * out) over channels
    (out = P v), a (T, D) product taken once instead of a (T, T) one per block.
    """
    qs, k, v, out, probs, scale = cache
    xp = get_array_module(qs)
    dout = xp.ascontiguousarray(dout)
    dq, dk, dv = xp.empty_like(qs), xp.zeros_like(k), xp.zeros_like(v)
    delta = (dout * out).sum(axis=-1, keepdims=True)                    # (B, H, T, 1) = rowsum(dP * P)
    for p in probs:
        e = p.shape[-1]
        s = e - p.shape[-2]
        d = dout[:, :, s:e]
        dv[:, :, :e] += p.swapaxes(-1, -2) @ d
        ds = d @ v[:, :, :e].swapaxes(-1, -2)                           # dP
        ds -= delta[:, :, s:e]
        ds *= p                                                         # dS
        xp.matmul(ds, k[:, :, :e], out=dq[:, :, s:e])
        dk[:, :, :e] += ds.swapaxes(-1, -2) @ qs[:, :, s:e]
    dq *= scale
    return dq, dk, dv


# --- cross-entropy ------------------------------------------------------------------------

def cross_entropy_forward(logits, targets, ignore_index=-100):
    """Mean negative log-likelihood of the targets.

    logits (N, V), targets int (N,) -> loss (0-d array). Rows whose target is `ignore_index`
    count for nothing (neither in the sum nor in the mean). With z = logits - row max (so exp
    cannot overflow): -log p[target] = log(sum(exp(z))) - z[target]. The cache keeps the
    probabilities, computed in place in one (N, V) buffer. This is the plain pair, for reading
    and for logits that exist anyway; training uses lm_head_cross_entropy (below), the same
    maths in chunks, because at GPT-2's vocabulary (N, V) is the largest array of a step.
    """
    xp = get_array_module(logits)
    z = float32_if_half(logits)
    z = z - z.max(axis=-1, keepdims=True)              # a new (N, V) array, reused below
    valid = targets != ignore_index
    safe = xp.where(valid, targets, 0)
    rows = xp.arange(z.shape[0])
    z_target = z[rows, safe]
    p = xp.exp(z, out=z)
    total = p.sum(axis=-1)
    p /= total[:, None]                                # now the softmax probabilities
    count = xp.maximum(valid.sum(), 1).astype(p.dtype)
    loss = ((xp.log(total) - z_target) * valid).sum() / count
    return loss, (p, safe, valid, count, logits.dtype)


def cross_entropy_backward(dloss, cache):
    """dloss (scalar) -> dlogits (N, V).

    loss = mean over valid rows of (log sum exp z - z[target])
      =>  dz = (softmax(z) - onehot(target)) / count, and 0 on ignored rows.
    """
    p, safe, valid, count, dtype = cache
    xp = get_array_module(p)
    w = valid * (dloss / count)                        # (N,) the weight of each row
    dz = p * w[:, None]
    dz[xp.arange(dz.shape[0]), safe] -= w
    return dz.astype(dtype, copy=False)


# --- the LM head and the loss together, a chunk of rows at a time -------------------------

def lm_head_cross_entropy(x, W, targets, ignore_index=-100, chunk_rows=None, need_dx=True, need_dW=True):
    """logits = x @ W^T, loss = cross_entropy(logits, targets), and the backward of both, in one pass.

    x (N, C), W (V, C) (the tied `wte`), targets int (N,) -> (loss 0-d, dx (N, C), dW (V, C)).
    need_dx / need_dW = False skip that gradient (None is returned): a frozen wte (LoRA) needs
    no dW, and evaluation needs neither.

    The same maths as linear_forward -> cross_entropy_forward -> cross_entropy_backward ->
    linear_backward (a test checks it), reorganised for memory: the logits (N, V) are by far
    the largest array of a training step (8192 tokens x 50257 = 1.6 GB in float32). Taking
    `chunk_rows` rows at a time, each chunk's logits become its probabilities and then its
    dlogits in one reused buffer, and are folded into dx and dW at once:
        dlogits = (softmax(logits) - onehot(target)) / count
        dx[rows] = dlogits @ W,    dW += dlogits^T @ x[rows]
    """
    xp = get_array_module(x)
    out_dtype = x.dtype
    x, W = float32_if_half(x), float32_if_half(W)   # float16 models: the loss in float32
    N, V = x.shape[0], W.shape[0]
    chunk_rows = max(1, min(chunk_rows or (1 << 25) // V, N))   # default ~128 MB of logits
    valid = targets != ignore_index
    safe = xp.where(valid, targets, 0)
    w = (valid / xp.maximum(valid.sum(), 1)).astype(x.dtype)    # (N,) each row's weight in the mean
    dx = xp.empty_like(x) if need_dx else None
    dW, dW_part = (xp.empty_like(W), None) if need_dW else (None, None)
    buf = xp.empty((chunk_rows, V), dtype=x.dtype)
    loss = xp.zeros((), dtype=x.dtype)
    for start in range(0, N, chunk_rows):
        stop = min(start + chunk_rows, N)
        rows, tgt, wc = xp.arange(stop - start), safe[start:stop], w[start:stop]
        xc, z = x[start:stop], buf[:stop - start]
        xp.matmul(xc, W.T, out=z)                                     # logits
        z_target, total = xp.empty(stop - start, dtype=x.dtype), xp.empty(stop - start, dtype=x.dtype)
        for a, b in cache_slices(xp, stop - start, V):   # a few rows at a time, their passes in cache
            zs = z[a:b]
            zs -= zs.max(axis=-1, keepdims=True)
            z_target[a:b] = zs[rows[:b - a], tgt[a:b]]
            xp.exp(zs, out=zs)
            total[a:b] = zs.sum(axis=-1)
            if need_dx or need_dW:
                zs *= (wc[a:b] / total[a:b])[:, None]                 # probabilities * weight
        loss += ((xp.log(total) - z_target) * wc).sum()
        if not (need_dx or need_dW):
            continue
        z[rows, tgt] -= wc                                            # dlogits = (p - onehot) * weight
        if need_dx:
            xp.matmul(z, W, out=dx[start:stop])
        if need_dW:
            if start == 0:
                xp.matmul(z.T, xc, out=dW)            # the first chunk writes dW: no zeros, no add
            else:
                dW_part = xp.empty_like(W) if dW_part is None else dW_part
                xp.matmul(z.T, xc, out=dW_part)
                dW += dW_part
    cast = lambda a: None if a is None else a.astype(out_dtype, copy=False)  # noqa: E731
    return loss, cast(dx), cast(dW)
