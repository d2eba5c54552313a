"""The exercises: statement, stub, reference, inputs and hints for each.

Every reference is a thin wrapper around picogpt's own code (layers, sampling, optim, the KV
cache) that gives it the exercise's plain signature: arrays in, arrays out, no cache objects.
So the checker holds students to exactly what the library computes.

Inputs come in two kinds. `_examples` are hand-picked and readable, simplest first, then the
edge cases the exercise is about (large logits, ties, tiny variances, an empty cache).
`_strategy` draws many more with hypothesis; it is imported only when a check runs, so that
`list` and `show` work without it.
"""

import math
from types import SimpleNamespace

import numpy as np

from .. import layers as L
from .. import sampling
from ..backend import get_array_module
from ..model import KVCache
from ..optim import AdamW
from .exercise import Exercise

CHECK_LINE = ("Check it: `picogpt.exercises.check(\"{name}\", {name})` in Python, or "
              "`python -m picogpt.exercises check {name} my_file.py` in a shell.")


# --- helpers shared by the exercises -------------------------------------------------------

def _hyp():
    """hypothesis's strategies, imported on demand (the checker needs it; list/show do not)."""
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
    return st, hnp


def _floats(lo, hi):
    st, _ = _hyp()
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=64)


def _array(shape, lo, hi):
    _, hnp = _hyp()
    return hnp.arrays(np.float64, shape, elements=_floats(lo, hi))


def _round(rng, shape, scale=1.0):
    """Random values with 2 decimals, so that hand-picked inputs read easily in the feedback."""
    return np.round(rng.standard_normal(shape) * scale, 2)


def _pair(outcome, i):
    """(yours, expected) for output i as float64 arrays of the same shape, else (None, None)."""
    if outcome.got is None:
        return None, None
    try:
        got = np.asarray(outcome.got[i], dtype=np.float64)
    except (TypeError, ValueError):
        return None, None
    exp = outcome.expected[i]
    return (got, exp) if got.shape == exp.shape else (None, None)


def _nonfinite_where_finite(outcome, i=None):
    """True when some output has NaN/inf where the expected value is finite."""
    for j in range(len(outcome.expected)) if i is None else [i]:
        got, exp = _pair(outcome, j)
        if got is not None and (~np.isfinite(got) & np.isfinite(exp)).any():
            return True
    return False


def _wrong(outcome, label):
    return any(m.output == label for m in outcome.mismatches)


def _softmax(x):
    xp = get_array_module(x)
    e = xp.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _causal(T):
    return np.tri(T, T, dtype=bool)


OVERFLOW_HINT = ("exp overflowed: exp(710) is already inf in float64, and inf / inf is NaN. Subtract "
                 "the row max before exp: softmax(x) = softmax(x - max(x)), and then the largest "
                 "exponent is exp(0) = 1.")


# === softmax ===============================================================================

def softmax_reference(x):
    return L.softmax_forward(x)[0]


SOFTMAX_STATEMENT = """\
## Exercise `softmax`

Implement `softmax(x)`: the softmax over the **last axis** of `x`.

- `x`: float array of shape `(..., K)`, any number of leading axes; each `x[..., :]` is a row.
- returns `p`, the same shape: every row is positive and sums to 1.

      p[..., i] = exp(x[..., i] - m) / sum_j exp(x[..., j] - m),    m = max_j x[..., j]

Subtracting the row max `m` changes nothing mathematically (it cancels between the top and the
bottom of the fraction), but it keeps `exp` from overflowing: `exp(710)` is already `inf` in
float64, and logits of size 1000 do happen. Entries that are `-inf` (masked positions in
attention) must come out as exactly 0.

**Hint:** reduce with `axis=-1, keepdims=True`, so that the row max and the row sum keep a
length-1 last axis and broadcast against `x`.

{check}
"""

SOFTMAX_STUB = '''\
def softmax(x):
    """Softmax over the last axis.

    x: float array (..., K)  ->  p: (..., K), each row positive and summing to 1.
        p[..., i] = exp(x[..., i] - m) / sum_j exp(x[..., j] - m),   m = the row max
    """
    raise NotImplementedError("your code here")
'''


def _softmax_examples():
    rng = np.random.default_rng(1)
    return [
        ("a small 2-D input", (np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]),)),
        ("a single row (1-D)", (np.array([0.5, -1.0, 2.0, 0.0]),)),
        ("a batch of rows (3-D)", (_round(rng, (2, 3, 4)),)),
        ("a square input, where the wrong axis still broadcasts", (_round(rng, (3, 3)),)),
        ("large logits (1e3 scale)", (np.array([[1000.0, 999.0, 998.0], [-1000.0, 0.0, 1000.0]]),)),
        ("all logits very negative", (np.array([[-1000.0, -1001.0, -1002.0]]),)),
        ("masked (-inf) entries", (np.array([[0.0, -np.inf, 1.0], [2.0, 2.0, -np.inf]]),)),
    ]


def _softmax_strategy():
    st, hnp = _hyp()

    @st.composite
    def inputs(draw):
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6))
        scale = draw(st.sampled_from([1.0, 10.0, 1e3]))   # 1e3: logits that overflow exp
        return (draw(_array(shape, -1.0, 1.0)) * scale,)

    return inputs()


def _softmax_sums(outcome):
    got, exp = _pair(outcome, 0)
    if got is None or not np.isfinite(got).all():
        return None
    sums = got.sum(axis=-1)
    if np.allclose(sums, 1.0, rtol=0, atol=1e-6):   # smaller slips: the generic patterns say it better
        return None
    if got.ndim > 1 and (np.allclose(got.sum(axis=0), 1.0, rtol=0, atol=1e-9)
                         or np.isclose(got.sum(), 1.0, rtol=0, atol=1e-9)):
        return ("your output sums to 1 over the wrong axis: normalise each row, over the LAST axis "
                "(e.sum(axis=-1, keepdims=True)).")
    return (f"the rows of your output sum to {float(sums.reshape(-1)[0]):.6g} (first row), not 1: divide "
            "exp(x - max) by its own row sum, over the last axis with keepdims=True.")


KEEPDIMS_HINT = ("reduce with keepdims=True: without it the row sums have shape (...,) and broadcast along the "
                 "wrong axis (or not at all).")


def _softmax_keepdims(outcome):
    if isinstance(outcome.error, ValueError) and "broadcast" in str(outcome.error):
        return KEEPDIMS_HINT
    return None


def _softmax_overflow(outcome):
    return OVERFLOW_HINT if _nonfinite_where_finite(outcome) else None


SOFTMAX = Exercise(
    name="softmax",
    summary="softmax over the last axis, stable for large logits",
    arg_names=("x",), outputs=("p",), reference=softmax_reference,
    statement=SOFTMAX_STATEMENT, stub_function=SOFTMAX_STUB,
    examples_fn=_softmax_examples, strategy=_softmax_strategy,
    hint="p = exp(x - m) / sum(exp(x - m)) row by row, with m the row max, over axis=-1 with keepdims=True.",
    detectors=[_softmax_keepdims, _softmax_overflow, _softmax_sums],
    mistakes=[(KEEPDIMS_HINT, lambda x: _no_keepdims_softmax(x))],
)


def _no_keepdims_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1)


# === layer norm, forward ===================================================================

def layernorm_forward_reference(x, g, b, eps=1e-5):
    return L.layernorm_forward(x, g, b, eps)[0]


LAYERNORM_FORWARD_STATEMENT = """\
## Exercise `layernorm_forward`

Implement `layernorm_forward(x, g, b, eps=1e-5)`: layer normalisation over the last axis.

- `x`: `(..., C)`, e.g. `(B, T, C)`; `g` (gain) and `b` (bias): `(C,)`; `eps`: a small float.
- returns `out`, the shape of `x`.

      mean = mean of x over the last axis               (one number per row)
      var  = mean of (x - mean)**2 over the last axis   (biased: divide by C, not C - 1)
      out  = (x - mean) / sqrt(var + eps) * g + b

GPT-2 uses the biased variance and puts `eps` *inside* the square root: a row whose entries are
all equal has variance 0, and `eps` keeps it from dividing by zero.

**Hint:** `x.mean(axis=-1, keepdims=True)`; NumPy's `var` is biased by default (`ddof=0`).

{check}
"""

LAYERNORM_FORWARD_STUB = '''\
def layernorm_forward(x, g, b, eps=1e-5):
    """Layer norm over the last axis.

    x (..., C), g (C,), b (C,)  ->  out (..., C)
        out = (x - mean) / sqrt(var + eps) * g + b,  mean and biased var over the last axis
    """
    raise NotImplementedError("your code here")
'''


def _layernorm_examples():
    rng = np.random.default_rng(2)
    ones, zeros = np.ones(4), np.zeros(4)
    g, b = np.array([1.0, 2.0, 0.5, -1.0]), np.array([0.0, 0.1, -0.2, 0.3])
    tiny = np.array([[5.0, 5.0001, 4.9999, 5.0], [1.0, 2.0, 3.0, 4.0]])
    return [
        ("a small input, g = 1, b = 0", (np.array([[1.0, 2.0, 3.0, 4.0], [2.0, -2.0, 0.0, 4.0]]), ones, zeros, 1e-5)),
        ("a small input with a gain and a bias", (np.array([[1.0, 2.0, 3.0, 4.0]]), g, b, 1e-5)),
        ("a batch (B, T, C) = (2, 3, 4)", (_round(rng, (2, 3, 4)), g, b, 1e-5)),
        ("rows with a tiny variance (1e-9, far below eps)", (tiny, g, b, 1e-5)),
        ("a constant row (variance exactly 0)", (np.array([[3.0, 3.0, 3.0, 3.0]]), g, b, 1e-5)),
        ("two channels, a larger eps", (np.array([[1.0, -1.0], [0.5, 0.25]]), np.array([1.5, 0.5]),
                                        np.array([0.0, 1.0]), 1e-2)),
    ]


def _layernorm_args(draw, with_dout=False):
    """(x, g, b, eps) or (dout, x, g, eps): rows of very different spreads, some tiny."""
    st, hnp = _hyp()
    lead = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=3))
    C = draw(st.integers(2, 8))
    z = draw(_array(lead + (C,), -3.0, 3.0))
    spread = np.array(draw(st.lists(st.sampled_from([1e-4, 1e-2, 1.0, 10.0]),
                                    min_size=int(np.prod(lead)), max_size=int(np.prod(lead))))).reshape(lead + (1,))
    offset = draw(_array(lead + (1,), -10.0, 10.0))
    x = offset + spread * z
    g, b = draw(_array((C,), -2.0, 2.0)), draw(_array((C,), -2.0, 2.0))
    eps = draw(st.sampled_from([1e-5, 1e-6, 1e-3]))
    if with_dout:
        return draw(_array(lead + (C,), -3.0, 3.0)), x, g, eps
    return x, g, b, eps


def _layernorm_forward_strategy():
    st, _ = _hyp()
    return st.composite(lambda draw: _layernorm_args(draw))()


def _rows(x, eps, ddof=0, eps_outside=False):
    """(x - mean) / sqrt(var + eps) with the variants of the classic mistakes."""
    xc = x - x.mean(axis=-1, keepdims=True)
    var = (xc * xc).sum(axis=-1, keepdims=True) / (x.shape[-1] - ddof)
    return xc / (np.sqrt(var) + eps) if eps_outside else xc / np.sqrt(var + eps)


def _layernorm_zero_variance(outcome):
    if _nonfinite_where_finite(outcome):
        return ("NaN/inf in your output: a row whose entries are all equal has variance 0. Put eps inside "
                "the square root, sqrt(var + eps), so you never divide by zero.")
    return None


LAYERNORM_FORWARD = Exercise(
    name="layernorm_forward",
    summary="layer norm over the last axis (biased variance, eps inside the sqrt)",
    arg_names=("x", "g", "b", "eps"), outputs=("out",), reference=layernorm_forward_reference,
    statement=LAYERNORM_FORWARD_STATEMENT, stub_function=LAYERNORM_FORWARD_STUB,
    examples_fn=_layernorm_examples, strategy=_layernorm_forward_strategy,
    hint="out = (x - mean) / sqrt(var + eps) * g + b, with mean and the biased var over the last axis "
         "(keepdims=True).",
    detectors=[_layernorm_zero_variance],
    mistakes=[
        ("use the biased variance: divide by C, not C - 1 (np.var's default ddof=0; your output is off by "
         "about sqrt(C / (C - 1))).", lambda x, g, b, eps: _rows(x, eps, ddof=1) * g + b),
        ("eps goes inside the square root: (x - mean) / sqrt(var + eps), not / (sqrt(var) + eps). It matters "
         "most for rows with a tiny variance.", lambda x, g, b, eps: _rows(x, eps, eps_outside=True) * g + b),
        ("add eps inside the square root: (x - mean) / sqrt(var + eps), as GPT-2 does; it also keeps a constant "
         "row from dividing by zero.", lambda x, g, b, eps: _rows(x, 0.0) * g + b),
        ("scale by g, then shift by b: n * g + b (you swapped them).", lambda x, g, b, eps: _rows(x, eps) * b + g),
        ("the gain g and the bias b must be applied: out = n * g + b.", lambda x, g, b, eps: _rows(x, eps)),
        ("normalise over the LAST axis (the C channels of each row), not axis 0.",
         lambda x, g, b, eps: np.swapaxes(_rows(np.swapaxes(x, 0, -1), eps), 0, -1) * g + b),
    ],
)


# === layer norm, backward ==================================================================

def layernorm_backward_reference(dout, x, g, eps=1e-5):
    # The bias only shifts the output: it plays no part in any gradient, so zeros will do.
    _, cache = L.layernorm_forward(x, g, np.zeros_like(g), eps)
    return L.layernorm_backward(dout, cache)


LAYERNORM_BACKWARD_STATEMENT = """\
## Exercise `layernorm_backward`

Implement `layernorm_backward(dout, x, g, eps=1e-5)`: the gradients of layer norm.

The forward (exercise `layernorm_forward`) was `out = n * g + b` with
`n = (x - mean) * rstd`, `rstd = 1 / sqrt(var + eps)`, mean and biased variance over the last axis.

- `dout`: `(..., C)`, the gradient of the loss with respect to `out`; `x`: `(..., C)`; `g`: `(C,)`.
- returns `(dx, dg, db)`: `dx` shaped like `x`; `dg` and `db` shaped like `g`, `(C,)`.

      db = sum of dout          over every axis but the last
      dg = sum of dout * n      over every axis but the last
      dn = dout * g
      dx = rstd * (dn - mean(dn) - n * mean(dn * n))     (means over the last axis, per row)

The last line is the chain rule through `n`: `x` moves each entry of `n` directly, but it
also moves the row's mean (hence `- mean(dn)`) and its variance (hence `- n * mean(dn * n)`).

**Hint:** recompute `n` and `rstd` from `x` first. For `x` of shape `(B, T, C)`, "every axis
but the last" is `axis=(0, 1)`: `tuple(range(x.ndim - 1))` works for any number of axes.

{check}
"""

LAYERNORM_BACKWARD_STUB = '''\
def layernorm_backward(dout, x, g, eps=1e-5):
    """Gradients of out = (x - mean) / sqrt(var + eps) * g + b over the last axis.

    dout (..., C), x (..., C), g (C,)  ->  dx (..., C), dg (C,), db (C,)
        n = (x - mean) * rstd,  dn = dout * g
        dx = rstd * (dn - mean(dn) - n * mean(dn * n)),  dg = sum(dout * n),  db = sum(dout)
    """
    raise NotImplementedError("your code here")
'''


def _layernorm_backward_examples():
    rng = np.random.default_rng(3)
    g = np.array([1.0, 2.0, 0.5, -1.0])
    x2 = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, -2.0, 0.0, 4.0]])
    return [
        ("a small input, g = 1", (np.array([[1.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, 0.0]]), x2, np.ones(4), 1e-5)),
        ("a small input with a gain", (_round(rng, (2, 4)), x2, g, 1e-5)),
        ("a batch (B, T, C) = (2, 3, 4): dg and db sum over two axes", (_round(rng, (2, 3, 4)),
                                                                         _round(rng, (2, 3, 4)), g, 1e-5)),
        ("rows with a tiny variance (1e-9, far below eps)", (_round(rng, (2, 4)),
                                                            np.array([[5.0, 5.0001, 4.9999, 5.0],
                                                                      [1.0, 2.0, 3.0, 4.0]]), g, 1e-5)),
        ("two channels, a larger eps", (np.array([[1.0, -0.5]]), np.array([[1.0, -1.0]]), np.array([1.5, 0.5]), 1e-2)),
    ]


def _layernorm_backward_strategy():
    st, _ = _hyp()
    return st.composite(lambda draw: _layernorm_args(draw, with_dout=True))()


def _ln_parts(x, eps, ddof=0):
    xc = x - x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt((xc * xc).sum(axis=-1, keepdims=True) / (x.shape[-1] - ddof) + eps)
    return xc * rstd, rstd


def _ln_backward_variant(dout, x, g, eps, drop_mean=False, drop_var=False, ddof=0, use_g=True):
    n, rstd = _ln_parts(x, eps, ddof)
    lead = tuple(range(x.ndim - 1))
    dn = dout * g if use_g else dout
    dx = dn
    if not drop_mean:
        dx = dx - dn.mean(axis=-1, keepdims=True)
    if not drop_var:
        dx = dx - n * (dn * n).mean(axis=-1, keepdims=True)
    return rstd * dx, (dout * n).sum(axis=lead), dout.sum(axis=lead)


def _layernorm_backward_shapes(outcome):
    for i, name in ((1, "dg"), (2, "db")):
        m = next((m for m in outcome.mismatches if m.output == name and m.kind == "shape"), None)
        if m is not None:
            return (f"{name} has the shape of g, (C,): sum over EVERY axis but the last, "
                    "axis=tuple(range(x.ndim - 1)) (for (B, T, C) that is axis=(0, 1)).")
    if any(m.output == "dx" and m.kind == "shape" for m in outcome.mismatches):
        return "dx has the shape of x: keep keepdims=True on the per-row means so they broadcast back."
    return None


def _layernorm_backward_nonfinite(outcome):
    if _nonfinite_where_finite(outcome):
        return "NaN/inf in your gradients: rstd = 1 / sqrt(var + eps), with eps inside the square root."
    return None


LAYERNORM_BACKWARD = Exercise(
    name="layernorm_backward",
    summary="layer norm backward: dx, dg, db from dout",
    arg_names=("dout", "x", "g", "eps"), outputs=("dx", "dg", "db"), reference=layernorm_backward_reference,
    statement=LAYERNORM_BACKWARD_STATEMENT, stub_function=LAYERNORM_BACKWARD_STUB,
    examples_fn=_layernorm_backward_examples, strategy=_layernorm_backward_strategy,
    hint="recompute n and rstd from x; dx = rstd * (dn - mean(dn) - n * mean(dn * n)) with dn = dout * g "
         "and means over the last axis; dg = sum(dout * n) and db = sum(dout) over all other axes.",
    detectors=[_layernorm_backward_shapes, _layernorm_backward_nonfinite],
    mistakes=[
        ("x also moves the row's mean and variance, not just n directly: dx = rstd * (dn - mean(dn) - "
         "n * mean(dn * n)), not dn * rstd.",
         lambda d, x, g, e: _ln_backward_variant(d, x, g, e, drop_mean=True, drop_var=True)),
        ("the variance depends on x too: subtract n * mean(dn * n) inside the bracket.",
         lambda d, x, g, e: _ln_backward_variant(d, x, g, e, drop_var=True)),
        ("the mean depends on x too: subtract mean(dn) inside the bracket.",
         lambda d, x, g, e: _ln_backward_variant(d, x, g, e, drop_mean=True)),
        ("use the biased variance (divide by C, not C - 1), as the forward does.",
         lambda d, x, g, e: _ln_backward_variant(d, x, g, e, ddof=1)),
        ("the gradient reaches n through the gain: dn = dout * g, not dout.",
         lambda d, x, g, e: _ln_backward_variant(d, x, g, e, use_g=False)),
    ],
    output_hints={
        "dg": "dg = sum of dout * n over every axis but the last, with n the NORMALISED x (not x itself).",
        "db": "db = sum of dout over every axis but the last.",
        "dx": "dx = rstd * (dn - mean(dn) - n * mean(dn * n)), dn = dout * g, means over the last axis.",
    },
)


# === GELU, backward ========================================================================

_GELU_C = math.sqrt(2.0 / math.pi)


def gelu_backward_reference(dout, x):
    return L.gelu_backward(dout, L.gelu_forward(x)[1])


GELU_BACKWARD_STATEMENT = """\
## Exercise `gelu_backward`

Implement `gelu_backward(dout, x)`: the gradient of GPT-2's GELU, times the upstream gradient.

GPT-2 uses the **tanh approximation** of GELU (not the exact one with `erf`):

      gelu(x) = 0.5 x (1 + t),    t = tanh(u),    u = sqrt(2/pi) (x + 0.044715 x**3)

- `dout`, `x`: the same shape, any shape.
- returns `dx = dout * gelu'(x)`, the shape of `x`.

By the product rule, and tanh' = 1 - tanh**2:

      gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t**2) du/dx,    du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x**2)

**Hint:** write `1 - t**2`, not `1 / cosh(u)**2`: `cosh` overflows to `inf` for large |x|
(x = 1000 gives u ~ 4e7), and a stray `inf * 0` is NaN.

{check}
"""

GELU_BACKWARD_STUB = '''\
def gelu_backward(dout, x):
    """Gradient of the tanh-approximation GELU, times dout.

    dout (...), x (...)  ->  dx (...)
        gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x**3)
        dx = dout * (0.5 (1 + t) + 0.5 x (1 - t**2) du/dx),  t = tanh(u)
    """
    raise NotImplementedError("your code here")
'''


def _gelu_examples():
    rng = np.random.default_rng(4)
    grid = np.linspace(-4.0, 4.0, 9)
    big = np.array([-1000.0, -50.0, -10.0, 0.0, 10.0, 50.0, 1000.0])
    return [
        ("x from -4 to 4, dout = 1", (np.ones(9), grid)),
        ("x from -4 to 4, random dout", (_round(rng, (9,)), grid)),
        ("a (2, 3, 4) batch", (_round(rng, (2, 3, 4)), _round(rng, (2, 3, 4), 2.0))),
        ("large |x| (up to 1000)", (_round(rng, (7,)), big)),
    ]


def _gelu_strategy():
    st, hnp = _hyp()

    @st.composite
    def inputs(draw):
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
        scale = draw(st.sampled_from([1.0, 5.0, 1e3]))    # 1e3: where cosh overflows
        return draw(_array(shape, -3.0, 3.0)), draw(_array(shape, -1.0, 1.0)) * scale

    return inputs()


def _gelu_parts(x):
    t = np.tanh(_GELU_C * (x + 0.044715 * x ** 3))
    return t, _GELU_C * (1.0 + 3 * 0.044715 * x ** 2)


def _gelu_erf_grad(x):
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * (1.0 + erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _gelu_nonfinite(outcome):
    if _nonfinite_where_finite(outcome):
        return ("NaN/inf in your output at large |x|: write tanh' as 1 - t**2, never 1 / cosh(u)**2 "
                "(cosh overflows to inf, and inf * 0 is NaN).")
    return None


GELU_BACKWARD = Exercise(
    name="gelu_backward",
    summary="GELU (tanh approximation) backward",
    arg_names=("dout", "x"), outputs=("dx",), reference=gelu_backward_reference,
    statement=GELU_BACKWARD_STATEMENT, stub_function=GELU_BACKWARD_STUB,
    examples_fn=_gelu_examples, strategy=_gelu_strategy,
    hint="dx = dout * (0.5 (1 + t) + 0.5 x (1 - t**2) sqrt(2/pi) (1 + 3 * 0.044715 x**2)), t = tanh(u).",
    detectors=[_gelu_nonfinite],
    mistakes=[
        ("GPT-2 uses the tanh approximation of GELU, not the exact erf form (they differ by up to ~1e-3): "
         "differentiate 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x**3))).",
         lambda d, x: d * _gelu_erf_grad(x)),
        ("multiply by dout: the chain rule gives dx = dout * gelu'(x).",
         lambda d, x: 0.5 * (1 + _gelu_parts(x)[0]) + 0.5 * x * (1 - _gelu_parts(x)[0] ** 2) * _gelu_parts(x)[1]),
        ("product rule: x also appears inside tanh, so add 0.5 x (1 - t**2) du/dx to 0.5 (1 + t).",
         lambda d, x: d * 0.5 * (1 + _gelu_parts(x)[0])),
        ("du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x**2): the derivative of x**3 is 3 x**2.",
         lambda d, x: d * (0.5 * (1 + _gelu_parts(x)[0])
                           + 0.5 * x * (1 - _gelu_parts(x)[0] ** 2) * _GELU_C * (1 + 0.044715 * x ** 2))),
        ("that is dout * gelu(x), the forward; the exercise asks for dout times the DERIVATIVE gelu'(x).",
         lambda d, x: d * 0.5 * x * (1 + _gelu_parts(x)[0])),
    ],
)


# === attention, forward ====================================================================

def attention_forward_reference(q, k, v):
    xp = get_array_module(q)
    T = q.shape[-2]
    return L.attention_forward(q, k, v, mask=L.causal_mask(xp, T, T))[0]


ATTENTION_FORWARD_STATEMENT = """\
## Exercise `attention_forward`

Implement `attention_forward(q, k, v)`: causal scaled dot-product attention, every head at once.

- `q`, `k`, `v`: `(B, H, T, D)`: batch, heads, positions, head size.
- returns `out`: `(B, H, T, D)`.

      S   = q @ k^T / sqrt(D)                 (B, H, T, T): S[..., i, j] scores query i against key j
      S[..., i, j] = -inf  where j > i        the causal mask: a position never sees the future
      P   = softmax(S) over the last axis     (each query's weights over the keys sum to 1)
      out = P @ v

**Hint:** `k.swapaxes(-1, -2)` transposes the last two axes; `np.tril(np.ones((T, T), dtype=bool))`
is True where j <= i; `np.where(mask, S, -np.inf)` masks. Subtract the row max in the softmax.

{check}
"""

ATTENTION_FORWARD_STUB = '''\
def attention_forward(q, k, v):
    """Causal scaled dot-product attention.

    q, k, v (B, H, T, D)  ->  out (B, H, T, D)
        out = softmax(q k^T / sqrt(D), with key j > query i masked to -inf) v
    """
    raise NotImplementedError("your code here")
'''


def _attention_examples(with_dout=False):
    rng = np.random.default_rng(5)

    def qkv(shape, scale=1.0):
        arrays = tuple(_round(rng, shape, scale) for _ in range(3))
        return ((_round(rng, shape),) + arrays) if with_dout else arrays

    return [
        ("one head, T = 3, D = 2", qkv((1, 1, 3, 2))),
        ("a single position (T = 1)", qkv((1, 1, 1, 2))),
        ("two sequences, two heads, T = 4, D = 3", qkv((2, 2, 4, 3))),
        ("large scores (q and k of size ~30)", qkv((1, 2, 3, 4), 30.0)),
    ]


def _attention_strategy(with_dout=False):
    st, _ = _hyp()

    @st.composite
    def inputs(draw):
        shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 4)))
        scale = draw(st.sampled_from([1.0, 3.0, 30.0]))
        arrays = tuple(draw(_array(shape, -1.0, 1.0)) * (scale if i < 2 else 1.0) for i in range(3))
        return ((draw(_array(shape, -2.0, 2.0)),) + arrays) if with_dout else arrays

    return inputs()


def _attn(q, k, v, scale=None, mask="causal", axis=-1, how="where"):
    """Attention with the variants of the classic mistakes; returns (out, P, scale)."""
    T, D = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    S = q @ k.swapaxes(-1, -2) * scale
    allowed = {"causal": _causal(T), "none": np.ones((T, T), bool), "upper": _causal(T).T}[mask]
    if how == "multiply":
        S = S * allowed
    elif how == "where":
        S = np.where(allowed, S, -np.inf)
    e = np.exp(S - S.max(axis=axis, keepdims=True))
    P = e / e.sum(axis=axis, keepdims=True)
    if how == "after":
        P = P * allowed
    return P @ v, P, scale


def _attention_nonfinite(outcome):
    return OVERFLOW_HINT if _nonfinite_where_finite(outcome) else None


ATTENTION_MISTAKES = [
    ("apply the causal mask: query i may only attend to keys j <= i. Set the scores above the diagonal "
     "to -inf before the softmax.", lambda q, k, v: _attn(q, k, v, mask="none")[0]),
    ("you masked the wrong triangle: keep keys j <= i (np.tril), hide j > i.",
     lambda q, k, v: _attn(q, k, v, mask="upper")[0]),
    ("scale the scores by 1 / sqrt(D), D = the head size q.shape[-1].",
     lambda q, k, v: _attn(q, k, v, scale=1.0)[0]),
    ("scale by 1 / sqrt(D), not 1 / D.", lambda q, k, v: _attn(q, k, v, scale=1.0 / q.shape[-1])[0]),
    ("the softmax runs over the KEYS, the last axis of the scores (axis=-1), not axis -2.",
     lambda q, k, v: _attn(q, k, v, axis=-2)[0]),
    ("mask with -inf, not by multiplying the scores by 0: a score of 0 still gets weight exp(0) = 1.",
     lambda q, k, v: _attn(q, k, v, how="multiply")[0]),
    ("mask BEFORE the softmax: zeroing weights afterwards leaves rows that no longer sum to 1.",
     lambda q, k, v: _attn(q, k, v, mask="causal", how="after")[0]),
]

ATTENTION_FORWARD = Exercise(
    name="attention_forward",
    summary="causal scaled dot-product attention, all heads at once",
    arg_names=("q", "k", "v"), outputs=("out",), reference=attention_forward_reference,
    statement=ATTENTION_FORWARD_STATEMENT, stub_function=ATTENTION_FORWARD_STUB,
    examples_fn=_attention_examples, strategy=_attention_strategy,
    hint="out = softmax(q k^T / sqrt(D) with keys j > i masked to -inf, over the last axis) @ v.",
    detectors=[_attention_nonfinite],
    mistakes=ATTENTION_MISTAKES,
)


# === attention, backward ===================================================================

def attention_backward_reference(dout, q, k, v):
    xp = get_array_module(q)
    T = q.shape[-2]
    _, cache = L.attention_forward(q, k, v, mask=L.causal_mask(xp, T, T))
    return L.attention_backward(dout, cache)


ATTENTION_BACKWARD_STATEMENT = """\
## Exercise `attention_backward`

Implement `attention_backward(dout, q, k, v)`: the gradients of causal attention (exercise
`attention_forward`) with respect to `q`, `k` and `v`.

- `dout`, `q`, `k`, `v`: `(B, H, T, D)`; `dout` is the gradient of the loss with respect to `out`.
- returns `(dq, dk, dv)`, each `(B, H, T, D)`.

Recompute the forward, then go through it backwards, one line at a time:

      S = q @ k^T * s  (s = 1 / sqrt(D), masked),    P = softmax(S),    out = P @ v

      out = P @ v     =>   dv = P^T @ dout,    dP = dout @ v^T
      P = softmax(S)  =>   dS = P * (dP - sum(dP * P over the last axis))      row by row
      S = q k^T * s   =>   dq = dS @ k * s,    dk = dS^T @ q * s

The softmax line comes from dP_i/dS_j = P_i (delta_ij - P_j). Masked entries have P = 0, so
their dS is 0 with no extra work.

**Hint:** every `^T` transposes the last two axes (`.swapaxes(-1, -2)`); `@` treats the
leading `(B, H)` axes as a batch.

{check}
"""

ATTENTION_BACKWARD_STUB = '''\
def attention_backward(dout, q, k, v):
    """Gradients of causal attention out = softmax(q k^T / sqrt(D), masked) v.

    dout, q, k, v (B, H, T, D)  ->  dq, dk, dv (B, H, T, D)
        dv = P^T dout,  dP = dout v^T,  dS = P * (dP - sum(dP * P, last axis))
        dq = dS k / sqrt(D),  dk = dS^T q / sqrt(D)
    """
    raise NotImplementedError("your code here")
'''


def _attn_backward_variant(dout, q, k, v, mask="causal", scale_grads=True, softmax="full",
                           transpose_dk=True, transpose_dv=True):
    out, P, s = _attn(q, k, v, mask=mask)
    dv = (P.swapaxes(-1, -2) if transpose_dv else P) @ dout
    dP = dout @ v.swapaxes(-1, -2)
    if softmax == "full":
        dS = P * (dP - (dP * P).sum(axis=-1, keepdims=True))
    elif softmax == "diagonal":
        dS = dP * P * (1 - P)
    else:
        dS = dP
    s = s if scale_grads else 1.0
    dq = dS @ k * s
    dk = (dS.swapaxes(-1, -2) if transpose_dk else dS) @ q * s
    return dq, dk, dv


ATTENTION_BACKWARD = Exercise(
    name="attention_backward",
    summary="causal attention backward: dq, dk, dv from dout",
    arg_names=("dout", "q", "k", "v"), outputs=("dq", "dk", "dv"), reference=attention_backward_reference,
    statement=ATTENTION_BACKWARD_STATEMENT, stub_function=ATTENTION_BACKWARD_STUB,
    examples_fn=lambda: _attention_examples(with_dout=True), strategy=lambda: _attention_strategy(with_dout=True),
    hint="recompute P; dv = P^T dout; dP = dout v^T; dS = P * (dP - sum(dP * P, last axis)); "
         "dq = dS k / sqrt(D); dk = dS^T q / sqrt(D).",
    detectors=[_attention_nonfinite],
    mistakes=[
        ("dq and dk need the forward's scale too: S = q k^T / sqrt(D), so dq = dS k / sqrt(D) and "
         "dk = dS^T q / sqrt(D).", lambda d, q, k, v: _attn_backward_variant(d, q, k, v, scale_grads=False)),
        ("the softmax Jacobian is not diagonal: dP_i/dS_j = P_i (delta_ij - P_j), so dS = P * (dP - "
         "sum(dP * P, last axis)), not dP * P * (1 - P).",
         lambda d, q, k, v: _attn_backward_variant(d, q, k, v, softmax="diagonal")),
        ("go back through the softmax: dS = P * (dP - sum(dP * P, last axis)), not dP.",
         lambda d, q, k, v: _attn_backward_variant(d, q, k, v, softmax="none")),
        ("recompute the forward WITH the causal mask: keys j > i get P = 0.",
         lambda d, q, k, v: _attn_backward_variant(d, q, k, v, mask="none")),
        ("dk = dS^T q / sqrt(D): transpose dS, whose last axis is the keys.",
         lambda d, q, k, v: _attn_backward_variant(d, q, k, v, transpose_dk=False)),
        ("dv = P^T dout: transpose P.", lambda d, q, k, v: _attn_backward_variant(d, q, k, v, transpose_dv=False)),
    ],
    output_hints={
        "dv": "dv = P^T @ dout, with P the causal attention weights (B, H, T, T) and ^T = .swapaxes(-1, -2).",
        "dq": "dq = dS @ k / sqrt(D), where dS = P * (dP - sum(dP * P, last axis)) and dP = dout @ v^T.",
        "dk": "dk = dS^T @ q / sqrt(D), where dS = P * (dP - sum(dP * P, last axis)) and dP = dout @ v^T.",
    },
)


# === cross-entropy, backward ===============================================================

def cross_entropy_backward_reference(logits, targets):
    _, cache = L.cross_entropy_forward(logits, targets)
    return L.cross_entropy_backward(1.0, cache)


CROSS_ENTROPY_BACKWARD_STATEMENT = """\
## Exercise `cross_entropy_backward`

Implement `cross_entropy_backward(logits, targets)`: the gradient of the mean cross-entropy
loss with respect to the logits.

- `logits`: `(N, V)`, one row of scores over the vocabulary per position; `targets`: int `(N,)`,
  the right token of each row.
- returns `dlogits`: `(N, V)`.

      loss = (1/N) sum_n -log softmax(logits[n])[targets[n]]
      dlogits[n] = (softmax(logits[n]) - onehot(targets[n])) / N

Raising the right token's logit lowers the loss (the `- onehot`); raising any logit raises its
probability, which costs in proportion to that probability (the `softmax`).

**Hint:** compute the softmax stably (subtract the row max: logits of size 1000 occur), then
subtract 1 at `[np.arange(N), targets]`, then divide by N.

{check}
"""

CROSS_ENTROPY_BACKWARD_STUB = '''\
def cross_entropy_backward(logits, targets):
    """Gradient of the mean cross-entropy loss with respect to the logits.

    logits (N, V), targets int (N,)  ->  dlogits (N, V)
        dlogits = (softmax(logits) - onehot(targets)) / N
    """
    raise NotImplementedError("your code here")
'''


def _cross_entropy_examples():
    rng = np.random.default_rng(6)
    return [
        ("a small input", (np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]), np.array([2, 0]))),
        ("a single row", (np.array([[0.5, -1.0, 0.0, 2.0]]), np.array([1]))),
        ("four rows, repeated targets", (_round(rng, (4, 5)), np.array([3, 3, 0, 4]))),
        ("large logits (1e3 scale)", (np.array([[1000.0, 0.0, -1000.0], [500.0, 500.0, 0.0]]), np.array([1, 0]))),
    ]


def _cross_entropy_strategy():
    st, _ = _hyp()

    @st.composite
    def inputs(draw):
        N, V = draw(st.integers(1, 5)), draw(st.integers(2, 8))
        scale = draw(st.sampled_from([1.0, 10.0, 1e3]))
        logits = draw(_array((N, V), -1.0, 1.0)) * scale
        targets = np.array(draw(st.lists(st.integers(0, V - 1), min_size=N, max_size=N)), dtype=np.int64)
        return logits, targets

    return inputs()


def _ce_variant(logits, targets, divide=True, onehot="rows"):
    N = logits.shape[0]
    d = _softmax(logits)
    if onehot == "rows":
        d[np.arange(N), targets] -= 1.0
    elif onehot == "columns":
        d[:, targets] -= 1.0
    return d / N if divide else d


def _cross_entropy_nonfinite(outcome):
    return OVERFLOW_HINT if _nonfinite_where_finite(outcome) else None


CROSS_ENTROPY_BACKWARD = Exercise(
    name="cross_entropy_backward",
    summary="gradient of the mean cross-entropy with respect to the logits",
    arg_names=("logits", "targets"), outputs=("dlogits",), reference=cross_entropy_backward_reference,
    statement=CROSS_ENTROPY_BACKWARD_STATEMENT, stub_function=CROSS_ENTROPY_BACKWARD_STUB,
    examples_fn=_cross_entropy_examples, strategy=_cross_entropy_strategy,
    hint="dlogits = (softmax(logits) - onehot(targets)) / N, with a stable softmax over the last axis.",
    detectors=[_cross_entropy_nonfinite],
    mistakes=[
        ("the loss is the MEAN over the N rows: divide the gradient by N.",
         lambda z, t: _ce_variant(z, t, divide=False)),
        ("subtract 1 at each row's target: dlogits = (softmax - onehot(targets)) / N.",
         lambda z, t: _ce_variant(z, t, onehot="none")),
        ("index the one-hot by row AND column, p[np.arange(N), targets] -= 1: p[:, targets] -= 1 "
         "subtracts at every row.", lambda z, t: _ce_variant(z, t, onehot="columns")),
    ],
)


# === top-p (nucleus) filtering =============================================================

def top_p_filter_reference(logits, p):
    return sampling.top_p_filter(logits, p)


TOP_P_FILTER_STATEMENT = """\
## Exercise `top_p_filter`

Implement `top_p_filter(logits, p)`: nucleus filtering, row by row. Keep the smallest set of
most likely tokens whose probability adds up to at least `p`; set every other logit to `-inf`
(so that sampling can never pick it).

- `logits`: `(B, V)`; `p`: a float in (0, 1].
- returns `(B, V)`: the kept logits unchanged, the others exactly `-inf`.

The rule, per row: compute the probabilities `softmax(logits)` and sort them, most likely
first. A token is kept when the total probability of the tokens *before* it in that order is
`< p`, so the most likely token is always kept, and so is the token whose probability makes the
total reach `p`. **Ties:** a token whose probability equals that of the last kept token is kept
too (sorting cannot decide between equals, so the rule must not depend on their order). `p = 1`
keeps everything.

Example: probabilities `[0.5, 0.3, 0.15, 0.05]` with `p = 0.7` keep the first two (0.5 < 0.7
before the second, 0.8 >= 0.7 before the third).

**Hint:** `sorted_p = -np.sort(-probs, axis=-1)`; the mass before each is `np.cumsum(sorted_p, axis=-1) -
sorted_p`; find the smallest kept probability of each row (a threshold) and keep `probs >= threshold`.

{check}
"""

TOP_P_FILTER_STUB = '''\
def top_p_filter(logits, p):
    """Nucleus (top-p) filtering: set the logits outside the nucleus to -inf.

    logits (B, V), p in (0, 1]  ->  (B, V)
        keep a token when the probability of the tokens more likely than it is < p;
        keep ties with the last kept token; leave kept logits unchanged.
    """
    raise NotImplementedError("your code here")
'''


def _top_p_examples():
    return [
        ("one row, p = 0.5", (np.array([[3.0, 2.0, 1.0, 0.0]]), 0.5)),
        ("one row, p = 0.9", (np.array([[3.0, 2.0, 1.0, 0.0]]), 0.9)),
        ("tokens in a shuffled order, two rows", (np.array([[0.0, 3.0, 1.0, 2.0], [1.0, -1.0, 2.5, 0.0]]), 0.8)),
        ("ties with the last kept token", (np.array([[2.0, 1.0, 1.0, 1.0, 0.0]]), 0.5)),
        ("p = 1 keeps everything", (np.array([[0.0, 1.0, 2.0, 3.0]]), 1.0)),
        ("a tiny p keeps only the top token", (np.array([[0.0, 1.0, 2.0, 3.0]]), 0.01)),
        ("large logits (1e3 scale)", (np.array([[1000.0, 999.0, 0.0, 998.0]]), 0.9)),
    ]


def _top_p_unambiguous(args):
    """Drop draws where p is within rounding of a cumulative sum, or two probabilities are equal
    to within rounding but not exactly: there the answer depends on the order of additions,
    not on understanding the rule."""
    logits, p = args
    probs = -np.sort(-_softmax(logits), axis=-1)
    before = np.cumsum(probs, axis=-1) - probs
    gaps = np.abs(np.diff(probs, axis=-1))
    return np.abs(before[:, 1:] - p).min(initial=1.0) > 1e-9 and not ((gaps > 0) & (gaps < 1e-12)).any()


def _top_p_strategy():
    st, hnp = _hyp()

    @st.composite
    def inputs(draw):
        shape = (draw(st.integers(1, 3)), draw(st.integers(1, 8)))
        values = st.one_of(st.integers(-3, 3).map(float), _floats(-5.0, 5.0))  # small integers make ties
        return draw(hnp.arrays(np.float64, shape, elements=values)), draw(_floats(0.05, 0.99))

    return inputs().filter(_top_p_unambiguous)


def _top_p_detector(outcome):
    got, exp = _pair(outcome, 0)
    if got is None:
        return None
    logits, p = outcome.args
    kept_exp, kept_got = np.isfinite(exp), np.isfinite(got)
    probs = _softmax(logits)
    if (~kept_exp & kept_got & (got != logits)).any():    # filtered, but to a number, not to -inf
        return "set the filtered logits to exactly -inf (-np.inf), not to a large negative number or 0."
    both = kept_exp & kept_got
    if both.any() and not np.allclose(got[both], logits[both], rtol=1e-12, atol=0):
        if np.allclose(got[both], probs[both], rtol=1e-9, atol=1e-12):
            return "return the LOGITS (unchanged where kept, -inf elsewhere), not the probabilities."
        return "leave the kept logits unchanged: no renormalising or rescaling, only -inf where filtered."
    missing, extra = kept_exp & ~kept_got, kept_got & ~kept_exp
    if missing.any() and not extra.any():
        # Ties: every token you dropped is as likely as the least likely one you kept.
        smallest_kept = np.where(kept_got, probs, np.inf).min(axis=-1, keepdims=True)
        if np.all(np.isclose(probs, smallest_kept, rtol=1e-12, atol=0)[missing]):
            return ("keep the ties: a token whose probability equals the last kept token's is kept too. "
                    "Compare probabilities with a threshold (probs >= smallest kept probability) rather than "
                    "keeping the first n positions of the sorted order.")
        return ("you keep too few tokens: a token is kept when the mass of the tokens BEFORE it is < p, so the "
                "token that makes the total reach p is kept (and the top token always is).")
    if extra.any() and not missing.any():
        return ("you keep too many tokens: stop at the first token whose preceding mass plus itself reaches p; "
                "a token is kept only when the mass of the tokens before it is < p.")
    return ("you keep the wrong tokens: sort the probabilities in DESCENDING order (most likely first), and "
            "compare every token's probability with the threshold in its original position.")


TOP_P_FILTER = Exercise(
    name="top_p_filter",
    summary="nucleus (top-p) filtering of logits, ties included",
    arg_names=("logits", "p"), outputs=("filtered",), reference=top_p_filter_reference,
    statement=TOP_P_FILTER_STATEMENT, stub_function=TOP_P_FILTER_STUB,
    examples_fn=_top_p_examples, strategy=_top_p_strategy,
    hint="sort probabilities descending; keep a token while the mass before it is < p; keep ties with the "
         "last kept one; -inf elsewhere; kept logits unchanged.",
    detectors=[_top_p_detector],
)


# === one AdamW step ========================================================================

def adamw_step_reference(p, g, m, v, t, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
    params = {"p": p.copy()}
    opt = AdamW(params, weight_decay=weight_decay, betas=tuple(betas), eps=eps)
    opt.m["p"], opt.v["p"] = m.copy(), v.copy()
    opt.decay = {"p"}          # the exercise decays p whatever its shape (AdamW spares 1-D ones)
    opt.t = t - 1              # step() counts the step it takes: this one is number t
    opt.step(params, {"p": g}, lr)
    return params["p"], opt.m["p"], opt.v["p"]


ADAMW_STEP_STATEMENT = """\
## Exercise `adamw_step`

Implement `adamw_step(p, g, m, v, t, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)`:
one step of AdamW (Adam with decoupled weight decay, as `torch.optim.AdamW` computes it).

- `p`: a parameter array; `g`: its gradient; `m`, `v`: the running first and second moments;
  all the same shape. `t`: the number of this step, 1 on the first. `lr`, `betas = (b1, b2)`,
  `eps`, `weight_decay`: floats.
- returns `(p, m, v)`, the updated arrays (new arrays, or the same ones updated in place).

      p = p * (1 - lr * weight_decay)          decoupled decay, first
      m = b1 * m + (1 - b1) * g                running mean of the gradients
      v = b2 * v + (1 - b2) * g**2             running mean of their squares
      m_hat = m / (1 - b1**t),   v_hat = v / (1 - b2**t)     bias correction
      p = p - lr * m_hat / (sqrt(v_hat) + eps)

The bias correction undoes the start at `m = v = 0`, which would make the first steps too small.
The decay is "decoupled": it shrinks `p` directly rather than being added to `g`, where Adam's
per-entry scaling would distort it.

**Hint:** `eps` goes *outside* the square root; on step `t = 1` with `m = v = 0`, each entry moves by
about `lr` in the direction of `-sign(g)`.

{check}
"""

ADAMW_STEP_STUB = '''\
def adamw_step(p, g, m, v, t, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
    """One AdamW step (decoupled weight decay, bias-corrected moments).

    p, g, m, v: arrays of one shape; t: this step's number (1 first)  ->  (p, m, v) updated
        p *= 1 - lr * weight_decay;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g**2
        p -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)
    """
    raise NotImplementedError("your code here")
'''


def _adamw_examples():
    rng = np.random.default_rng(7)
    p, g = _round(rng, (2, 3)), _round(rng, (2, 3))
    m, v = _round(rng, (2, 3), 0.1), np.round(rng.random((2, 3)) * 0.1, 3)
    zeros = np.zeros((2, 3))
    return [
        ("the first step (t = 1, m = v = 0)", (p, g, zeros, zeros, 1, 1e-3, (0.9, 0.95), 1e-8, 0.1)),
        ("a later step (t = 10) with moments", (p, g, m, v, 10, 1e-2, (0.9, 0.95), 1e-8, 0.1)),
        ("no weight decay", (p, g, m, v, 3, 1e-2, (0.9, 0.999), 1e-8, 0.0)),
        ("tiny gradients (1e-7), where eps matters", (p, g * 1e-7, zeros, zeros, 1, 1e-3, (0.9, 0.95), 1e-8, 0.1)),
        ("a large lr and weight decay", (p, g, m, v, 5, 0.1, (0.8, 0.99), 1e-6, 0.5)),
        ("step 10000 (bias correction ~ 1)", (p, g, m, v, 10000, 1e-3, (0.9, 0.95), 1e-8, 0.1)),
    ]


def _adamw_strategy():
    st, hnp = _hyp()

    @st.composite
    def inputs(draw):
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=4))
        p, m = draw(_array(shape, -3.0, 3.0)), draw(_array(shape, -1.0, 1.0))
        g = draw(_array(shape, -3.0, 3.0)) * draw(st.sampled_from([1.0, 1e-3, 1e-7]))
        v = draw(_array(shape, 0.0, 1.0)) * draw(st.sampled_from([1.0, 1e-6, 0.0]))
        t, lr = draw(st.integers(1, 1000)), draw(_floats(1e-4, 0.1))
        betas = draw(st.sampled_from([(0.9, 0.95), (0.9, 0.999), (0.8, 0.99)]))
        eps, wd = draw(st.sampled_from([1e-8, 1e-6])), draw(st.sampled_from([0.0, 0.01, 0.1, 0.5]))
        return p, g, m, v, t, lr, betas, eps, wd

    return inputs()


def _adamw_variant(p, g, m, v, t, lr, betas, eps, wd, correct=True, decay="first", eps_inside=False,
                   t_shift=0, swap_betas=False):
    b1, b2 = betas[::-1] if swap_betas else betas
    if decay == "first":
        p = p * (1 - lr * wd)
    elif decay == "no lr":
        p = p * (1 - wd)
    elif decay == "l2":
        g = g + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    tt = t + t_shift
    m_hat, v_hat = (m / (1 - b1 ** tt), v / (1 - b2 ** tt)) if correct else (m, v)
    step = m_hat / (np.sqrt(v_hat + eps) if eps_inside else np.sqrt(v_hat) + eps)
    p = p - lr * step
    if decay == "last":
        p = p * (1 - lr * wd)
    return p, m, v


ADAMW_STEP = Exercise(
    name="adamw_step",
    summary="one AdamW step: decoupled weight decay, bias-corrected moments",
    arg_names=("p", "g", "m", "v", "t", "lr", "betas", "eps", "weight_decay"), outputs=("p", "m", "v"),
    reference=adamw_step_reference, statement=ADAMW_STEP_STATEMENT, stub_function=ADAMW_STEP_STUB,
    examples_fn=_adamw_examples, strategy=_adamw_strategy,
    hint="decay p by (1 - lr * weight_decay) first; update m and v; bias-correct with b**t; "
         "p -= lr * m_hat / (sqrt(v_hat) + eps).",
    mistakes=[
        ("bias-correct the moments: m_hat = m / (1 - b1**t), v_hat = v / (1 - b2**t).",
         lambda *a: _adamw_variant(*a, correct=False)),
        ("the decay is decoupled: multiply p by (1 - lr * weight_decay); do not add weight_decay * p to the "
         "gradient (that is Adam with L2, not AdamW).", lambda *a: _adamw_variant(*a, decay="l2")),
        ("the decay is scaled by the learning rate: p *= 1 - lr * weight_decay.",
         lambda *a: _adamw_variant(*a, decay="no lr")),
        ("decay p before the Adam update, as torch.optim.AdamW does (p *= 1 - lr * weight_decay first).",
         lambda *a: _adamw_variant(*a, decay="last")),
        ("eps goes outside the square root: sqrt(v_hat) + eps.", lambda *a: _adamw_variant(*a, eps_inside=True)),
        ("t is the number of THIS step (1 on the first): bias-correct with b1**t and b2**t.",
         lambda *a: _adamw_variant(*a, t_shift=1)),
        ("t is the number of THIS step (1 on the first): bias-correct with b1**t and b2**t.",
         lambda *a: _adamw_variant(*a, t_shift=-1)),
        ("b1 = betas[0] goes with m (the gradients), b2 = betas[1] with v (their squares).",
         lambda *a: _adamw_variant(*a, swap_betas=True)),
    ],
    output_hints={
        "m": "m = b1 * m + (1 - b1) * g, with b1 = betas[0].",
        "v": "v = b2 * v + (1 - b2) * g**2, with b2 = betas[1].",
        "p": "p = p * (1 - lr * weight_decay) - lr * m_hat / (sqrt(v_hat) + eps), with the NEW m and v.",
    },
)


# === the KV-cache update ===================================================================

def kv_cache_update_reference(k_cache, v_cache, k_new, v_new, length):
    B, H, max_len, D = k_cache.shape
    config = SimpleNamespace(n_layer=1, n_head=H, head_dim=D)
    cache = KVCache(config, B, max_len, get_array_module(k_cache), k_cache.dtype)
    cache.k[0], cache.v[0] = k_cache, v_cache    # the caller's arrays: append writes into them
    cache.length = length
    return cache.append(0, k_new, v_new)


KV_CACHE_UPDATE_STATEMENT = """\
## Exercise `kv_cache_update`

Implement `kv_cache_update(k_cache, v_cache, k_new, v_new, length)`: store the keys and values
of new positions in a preallocated cache, and return every key and value so far.

While generating, each step computes keys and values only for the new token(s); the ones of
earlier positions are kept in a cache, allocated once for `max_len` positions, so that no step
has to copy it (a concatenate would copy the whole cache every step).

- `k_cache`, `v_cache`: `(B, H, max_len, D)`; positions `0 .. length - 1` are filled, the rest
  is left-over data.
- `k_new`, `v_new`: `(B, H, T, D)`, the next `T` positions; `length + T <= max_len`.
- `length`: an int, how many positions are filled (0 for an empty cache).
- **write** `k_new` and `v_new` into the caches, in place, at positions `length .. length + T - 1`;
  leave every other position as it was;
- **return** `(k_all, v_all)`, each `(B, H, length + T, D)`: the filled part of each cache.

**Hint:** positions are axis 2. `k_cache[:, :, a:b] = k_new` writes in place; `k_cache[:, :, :n]` is a
view (no copy).

{check}
"""

KV_CACHE_UPDATE_STUB = '''\
def kv_cache_update(k_cache, v_cache, k_new, v_new, length):
    """Write the new keys/values into the caches in place; return the filled parts.

    k_cache, v_cache (B, H, max_len, D), k_new, v_new (B, H, T, D), length int
        ->  k_all, v_all (B, H, length + T, D)
    """
    raise NotImplementedError("your code here")
'''


def _kv_args(rng, B, H, max_len, D, T, length):
    caches = [_round(rng, (B, H, max_len, D)) for _ in range(2)]   # left-over data beyond `length`
    news = [_round(rng, (B, H, T, D)) for _ in range(2)]
    return caches[0], caches[1], news[0], news[1], length


def _kv_examples():
    rng = np.random.default_rng(8)
    return [
        ("the prompt: an empty cache (length 0), T = 3", _kv_args(rng, 1, 1, 5, 2, 3, 0)),
        ("a decoding step: length 3, T = 1", _kv_args(rng, 1, 2, 6, 2, 1, 3)),
        ("two sequences, length 2, T = 2", _kv_args(rng, 2, 2, 6, 3, 2, 2)),
        ("filling the cache to the end", _kv_args(rng, 1, 1, 4, 2, 2, 2)),
    ]


def _kv_strategy():
    st, _ = _hyp()

    @st.composite
    def inputs(draw):
        B, H, D = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
        max_len = draw(st.integers(1, 6))
        T = draw(st.integers(1, max_len))
        length = draw(st.integers(0, max_len - T))
        caches = [draw(_array((B, H, max_len, D), -5.0, 5.0)) for _ in range(2)]
        news = [draw(_array((B, H, T, D), -5.0, 5.0)) for _ in range(2)]
        return caches[0], caches[1], news[0], news[1], length

    return inputs()


def _kv_detector(outcome):
    k_cache, _, k_new, _, length = outcome.args
    T, max_len = k_new.shape[2], k_cache.shape[2]
    if isinstance(outcome.error, ValueError) and "broadcast" in str(outcome.error):
        return ("the slice you write into must hold exactly T positions: k_cache[:, :, length:length + T] "
                "(positions are axis 2).")
    if outcome.got is None:
        return None
    shapes = [np.shape(g) for g in outcome.got[:2]]
    if any(s != (k_cache.shape[:2] + (length + T, k_cache.shape[3])) for s in shapes):
        if any(len(s) == 4 and s[2] == max_len for s in shapes):
            return "return only the filled part, k_cache[:, :, :length + T], not the whole cache."
        return "k_all is (B, H, length + T, D): positions are axis 2, and it holds the old AND the new ones."
    outputs_ok = not any(_wrong(outcome, label) for label in ("k_all", "v_all"))
    if outputs_ok:
        return ("write into k_cache and v_cache IN PLACE (k_cache[:, :, length:length + T] = k_new) and leave "
                "the other positions alone: the cache is preallocated so that no step copies it.")
    got_k = np.asarray(outcome.got[0])
    if got_k.shape[2] >= T and np.array_equal(got_k[:, :, :T], k_new) and length:
        return "write the new positions after the cached ones, at length .. length + T - 1, not at 0."
    return None


KV_CACHE_UPDATE = Exercise(
    name="kv_cache_update",
    summary="write new keys/values into a preallocated KV cache, return the filled part",
    arg_names=("k_cache", "v_cache", "k_new", "v_new", "length"), outputs=("k_all", "v_all"),
    reference=kv_cache_update_reference, statement=KV_CACHE_UPDATE_STATEMENT, stub_function=KV_CACHE_UPDATE_STUB,
    examples_fn=_kv_examples, strategy=_kv_strategy, inplace=("k_cache", "v_cache"),
    hint="k_cache[:, :, length:length + T] = k_new (same for v), then return k_cache[:, :, :length + T] "
         "and v_cache[:, :, :length + T].",
    detectors=[_kv_detector],
)


EXERCISES = {ex.name: ex for ex in [
    SOFTMAX, LAYERNORM_FORWARD, LAYERNORM_BACKWARD, GELU_BACKWARD, ATTENTION_FORWARD, ATTENTION_BACKWARD,
    CROSS_ENTROPY_BACKWARD, TOP_P_FILTER, ADAMW_STEP, KV_CACHE_UPDATE,
]}

for _ex in EXERCISES.values():
    _ex.statement = _ex.statement.format(check=CHECK_LINE.format(name=_ex.name))
