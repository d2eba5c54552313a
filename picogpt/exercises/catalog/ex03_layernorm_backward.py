"""Exercise `layernorm_backward`: the gradients of layer norm, derived by the student."""

import numpy as np

from ... import layers as L
from ..exercise import Exercise
from .common import hyp, nonfinite_where_finite, rounded
from .ex02_layernorm_forward import layernorm_args


def reference(dout, x, g, eps=1e-5):
    # The bias only shifts the output: it plays no part in any gradient, so zeros will do.
    _, cache = L.layernorm_forward(x, g, np.zeros_like(g), eps)
    return L.layernorm_backward(dout, cache)


STATEMENT = """\
## Exercise `layernorm_backward`

Implement `layernorm_backward(dout, x, g, eps=1e-5)`: the gradients of layer norm.

The forward (exercise `layernorm_forward`), per row of C entries, was

      mean = mean(x),   var = mean((x - mean)**2)   (over the last axis, biased)
      rstd = 1 / sqrt(var + eps),   n = (x - mean) * rstd,   out = n * g + b

- `dout`: `(..., C)`, the gradient of the loss with respect to `out`; `x`: `(..., C)`; `g`: `(C,)`.
- returns `(dx, dg, db)`: `dx` shaped like `x`; `dg` and `db` shaped like `g`, `(C,)`.

Derive the three gradients with the chain rule before you write code. `g` and `b` are used at
every position, so their gradients gather contributions from all of them. For `dx`, mind that
each `x[..., i]` moves `n` in more than one way: every entry of its row shares the mean and the
variance. A good derivation gives `dx` in one line, with means over the last axis and no
(C, C) matrix.

{check}
"""

STUB = '''\
def layernorm_backward(dout, x, g, eps=1e-5):
    """Gradients of out = (x - mean) / sqrt(var + eps) * g + b over the last axis.

    dout (..., C), x (..., C), g (C,)  ->  dx (..., C), dg (C,), db (C,)
    """
    raise NotImplementedError("your code here")
'''

HINTS = (
    "start with db and dg: out = n * g + b uses the same g and b at every position, so db is the sum of "
    "dout, and dg the sum of dout * n, over every axis but the last. For dx, first go back through the "
    "gain: dn = dout * g. Then recompute mean, rstd and n from x.",
    "n_j = (x_j - mean) * rstd depends on x_i three ways: directly, through the mean (d mean / d x_i = 1/C) "
    "and through rstd (d rstd / d x_i = -rstd**3 (x_i - mean) / C = -rstd**2 n_i / C). Together: "
    "d n_j / d x_i = rstd * (delta_ij - 1/C - n_i n_j / C). Now sum: dx_i = sum_j dn_j * d n_j / d x_i.",
    "dx = rstd * (dn - mean(dn) - n * mean(dn * n)), with dn = dout * g and both means over the last axis "
    "(keepdims=True); dg = sum(dout * n) and db = sum(dout) over axis=tuple(range(x.ndim - 1)).",
)

MODEL_ANSWER = """\
mean = x.mean(axis=-1, keepdims=True)
rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
n = (x - mean) * rstd
lead = tuple(range(x.ndim - 1))                        # every axis but the channels
dg = (dout * n).sum(axis=lead)
db = dout.sum(axis=lead)
dn = dout * g
dx = rstd * (dn - dn.mean(axis=-1, keepdims=True) - n * (dn * n).mean(axis=-1, keepdims=True))
return dx, dg, db"""


def examples():
    rng = np.random.default_rng(3)
    g = np.array([1.0, 2.0, 0.5, -1.0])
    x2 = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, -2.0, 0.0, 4.0]])
    return [
        ("a small input, g = 1", (np.array([[1.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, 0.0]]), x2, np.ones(4), 1e-5)),
        ("a small input with a gain", (rounded(rng, (2, 4)), x2, g, 1e-5)),
        ("a batch (B, T, C) = (2, 3, 4): dg and db sum over two axes", (rounded(rng, (2, 3, 4)),
                                                                         rounded(rng, (2, 3, 4)), g, 1e-5)),
        ("rows with a tiny variance (1e-9, far below eps)", (rounded(rng, (2, 4)),
                                                            np.array([[5.0, 5.0001, 4.9999, 5.0],
                                                                      [1.0, 2.0, 3.0, 4.0]]), g, 1e-5)),
        ("two channels, a larger eps", (np.array([[1.0, -0.5]]), np.array([[1.0, -1.0]]), np.array([1.5, 0.5]), 1e-2)),
    ]


def strategy():
    st, _ = hyp()
    return st.composite(lambda draw: layernorm_args(draw, with_dout=True))()


def _parts(x, eps, ddof=0):
    xc = x - x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt((xc * xc).sum(axis=-1, keepdims=True) / (x.shape[-1] - ddof) + eps)
    return xc * rstd, rstd


def _variant(dout, x, g, eps, drop_mean=False, drop_var=False, ddof=0, use_g=True):
    """The backward with the classic mistakes switched on."""
    n, rstd = _parts(x, eps, ddof)
    lead = tuple(range(x.ndim - 1))
    dn = dout * g if use_g else dout
    dx = dn
    if not drop_mean:
        dx = dx - dn.mean(axis=-1, keepdims=True)
    if not drop_var:
        dx = dx - n * (dn * n).mean(axis=-1, keepdims=True)
    return rstd * dx, (dout * n).sum(axis=lead), dout.sum(axis=lead)


def _shapes(outcome):
    for name in ("dg", "db"):
        if any(m.output == name and m.kind == "shape" for m in outcome.mismatches):
            return (f"{name} has the shape of g, (C,): sum over EVERY axis but the last, "
                    "axis=tuple(range(x.ndim - 1)) (for (B, T, C) that is axis=(0, 1)).")
    if any(m.output == "dx" and m.kind == "shape" for m in outcome.mismatches):
        return "dx has the shape of x: keep keepdims=True on the per-row means so they broadcast back."
    return None


def _nonfinite(outcome):
    if nonfinite_where_finite(outcome):
        return "NaN/inf in your gradients: rstd = 1 / sqrt(var + eps), with eps inside the square root."
    return None


EXERCISE = Exercise(
    name="layernorm_backward",
    summary="layer norm backward: dx, dg, db from dout",
    arg_names=("dout", "x", "g", "eps"), outputs=("dx", "dg", "db"), reference=reference,
    statement=STATEMENT, stub_function=STUB, hints=HINTS, model_answer=MODEL_ANSWER,
    examples_fn=examples, strategy=strategy,
    detectors=[_shapes, _nonfinite],
    mistakes=[
        ("x reaches n three ways: directly, through the row's mean, and through its variance (rstd). Your dx "
         "follows only the direct one, dn * rstd (`python -m picogpt.exercises hint layernorm_backward 2`).",
         lambda d, x, g, e: _variant(d, x, g, e, drop_mean=True, drop_var=True)),
        ("the variance depends on x too: your dx misses the path from x through rstd to n.",
         lambda d, x, g, e: _variant(d, x, g, e, drop_var=True)),
        ("the mean depends on x too: your dx misses the path from x through the row's mean to n.",
         lambda d, x, g, e: _variant(d, x, g, e, drop_mean=True)),
        ("use the biased variance (divide by C, not C - 1), as the forward does.",
         lambda d, x, g, e: _variant(d, x, g, e, ddof=1)),
        ("the gradient reaches n through the gain: dn = dout * g, not dout.",
         lambda d, x, g, e: _variant(d, x, g, e, use_g=False)),
    ],
    output_hints={
        "dg": "dg = sum of dout * n over every axis but the last, with n the NORMALISED x (not x itself).",
        "db": "db = sum of dout over every axis but the last.",
        "dx": "dx is wrong: follow every path from x_i to the n_j of its row (directly, through the mean, "
              "through rstd) and sum them (`python -m picogpt.exercises hint layernorm_backward 2`).",
    },
)
