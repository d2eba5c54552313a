"""Exercise `layernorm_forward`: layer norm over the last axis, as GPT-2 computes it."""

import numpy as np

from ... import layers as L
from ..exercise import Exercise
from .common import array, hyp, nonfinite_where_finite, rounded


def reference(x, g, b, eps=1e-5):
    return L.layernorm_forward(x, g, b, eps)[0]


STATEMENT = """\
## Exercise `layernorm_forward`

Implement `layernorm_forward(x, g, b, eps=1e-5)`: layer normalisation over the last axis.

- `x`: `(..., C)`, e.g. `(B, T, C)`; `g` (gain) and `b` (bias): `(C,)`; `eps`: a small float.
- returns `out`, the shape of `x`.

Each row `x[..., :]` of C numbers is shifted to mean 0 and scaled to variance 1, then given
the gain and bias every row shares:

      mean = mean of x over the last axis               (one number per row)
      var  = mean of (x - mean)**2 over the last axis   (biased: divide by C, not C - 1)
      out  = (x - mean) / sqrt(var + eps) * g + b

GPT-2 uses the biased variance and puts `eps` *inside* the square root. Your function must
also handle a row whose entries are all equal (variance exactly 0).

{check}
"""

STUB = '''\
def layernorm_forward(x, g, b, eps=1e-5):
    """Layer norm over the last axis.

    x (..., C), g (C,), b (C,)  ->  out (..., C)
        out = (x - mean) / sqrt(var + eps) * g + b,  mean and biased var over the last axis
    """
    raise NotImplementedError("your code here")
'''

HINTS = (
    "compute one mean and one variance per row: reduce over axis=-1 with keepdims=True, so that "
    "they keep a length-1 last axis and broadcast back against x.",
    "the variance is biased: the mean of (x - mean)**2, dividing by C. NumPy's x.var(axis=-1) is biased "
    "by default (ddof=0); eps goes inside the square root, so a constant row divides by sqrt(eps), not 0.",
    "n = (x - x.mean(axis=-1, keepdims=True)) / np.sqrt(x.var(axis=-1, keepdims=True) + eps), then "
    "out = n * g + b: g and b, shaped (C,), broadcast along the last axis.",
)

MODEL_ANSWER = """\
mean = x.mean(axis=-1, keepdims=True)
var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)   # biased: divide by C
n = (x - mean) / np.sqrt(var + eps)
return n * g + b"""


def examples():
    rng = np.random.default_rng(2)
    ones, zeros = np.ones(4), np.zeros(4)
    g, b = np.array([1.0, 2.0, 0.5, -1.0]), np.array([0.0, 0.1, -0.2, 0.3])
    tiny = np.array([[5.0, 5.0001, 4.9999, 5.0], [1.0, 2.0, 3.0, 4.0]])
    return [
        ("a small input, g = 1, b = 0", (np.array([[1.0, 2.0, 3.0, 4.0], [2.0, -2.0, 0.0, 4.0]]), ones, zeros, 1e-5)),
        ("a small input with a gain and a bias", (np.array([[1.0, 2.0, 3.0, 4.0]]), g, b, 1e-5)),
        ("a batch (B, T, C) = (2, 3, 4)", (rounded(rng, (2, 3, 4)), g, b, 1e-5)),
        ("rows with a tiny variance (1e-9, far below eps)", (tiny, g, b, 1e-5)),
        ("a constant row (variance exactly 0)", (np.array([[3.0, 3.0, 3.0, 3.0]]), g, b, 1e-5)),
        ("two channels, a larger eps", (np.array([[1.0, -1.0], [0.5, 0.25]]), np.array([1.5, 0.5]),
                                        np.array([0.0, 1.0]), 1e-2)),
    ]


def layernorm_args(draw, with_dout=False):
    """(x, g, b, eps) or (dout, x, g, eps): rows of very different spreads, some tiny."""
    st, hnp = hyp()
    lead = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=3))
    C = draw(st.integers(2, 8))
    z = draw(array(lead + (C,), -3.0, 3.0))
    spread = np.array(draw(st.lists(st.sampled_from([1e-4, 1e-2, 1.0, 10.0]),
                                    min_size=int(np.prod(lead)), max_size=int(np.prod(lead))))).reshape(lead + (1,))
    offset = draw(array(lead + (1,), -10.0, 10.0))
    x = offset + spread * z
    g, b = draw(array((C,), -2.0, 2.0)), draw(array((C,), -2.0, 2.0))
    eps = draw(st.sampled_from([1e-5, 1e-6, 1e-3]))
    if with_dout:
        return draw(array(lead + (C,), -3.0, 3.0)), x, g, eps
    return x, g, b, eps


def strategy():
    st, _ = hyp()
    return st.composite(lambda draw: layernorm_args(draw))()


def _rows(x, eps, ddof=0, eps_outside=False):
    """(x - mean) / sqrt(var + eps) with the variants of the classic mistakes."""
    xc = x - x.mean(axis=-1, keepdims=True)
    var = (xc * xc).sum(axis=-1, keepdims=True) / (x.shape[-1] - ddof)
    return xc / (np.sqrt(var) + eps) if eps_outside else xc / np.sqrt(var + eps)


def _zero_variance(outcome):
    if nonfinite_where_finite(outcome):
        return ("NaN/inf in your output: a row whose entries are all equal has variance 0. Put eps inside "
                "the square root, sqrt(var + eps), so you never divide by zero.")
    return None


EXERCISE = Exercise(
    name="layernorm_forward",
    summary="layer norm over the last axis (biased variance, eps inside the sqrt)",
    arg_names=("x", "g", "b", "eps"), outputs=("out",), reference=reference,
    statement=STATEMENT, stub_function=STUB, hints=HINTS, model_answer=MODEL_ANSWER,
    examples_fn=examples, strategy=strategy,
    detectors=[_zero_variance],
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
