"""Exercise `gelu_backward`: the derivative of GPT-2's tanh-approximation GELU."""

import math

import numpy as np

from ... import layers as L
from ..exercise import Exercise
from .common import array, hyp, nonfinite_where_finite, rounded

C = math.sqrt(2.0 / math.pi)


def reference(dout, x):
    return L.gelu_backward(dout, L.gelu_forward(x)[1])


STATEMENT = """\
## Exercise `gelu_backward`

Implement `gelu_backward(dout, x)`: the gradient of GPT-2's GELU, times the upstream gradient.

GPT-2 uses the **tanh approximation** of GELU (not the exact one with `erf`):

      gelu(x) = 0.5 x (1 + tanh(u)),    u = sqrt(2/pi) (x + 0.044715 x**3)

- `dout`, `x`: the same shape, any shape.
- returns `dx = dout * gelu'(x)`, the shape of `x`.

Differentiate `gelu` yourself, then write it in NumPy. Your function must stay finite for
|x| up to 1000 (where `u` is about 4e7): choose a form of the derivative that does not overflow.

{check}
"""

STUB = '''\
def gelu_backward(dout, x):
    """Gradient of the tanh-approximation GELU, times dout.

    dout (...), x (...)  ->  dx (...)
        gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x**3);  dx = dout * gelu'(x)
    """
    raise NotImplementedError("your code here")
'''

HINTS = (
    "gelu(x) is a product, 0.5 x times (1 + tanh(u)), and x appears in both factors: use the product rule, "
    "and the chain rule through u inside tanh.",
    "with t = tanh(u): gelu'(x) = 0.5 (1 + t) + 0.5 x tanh'(u) du/dx, and tanh'(u) = 1 - t**2. Write it as "
    "1 - t**2, not 1 / cosh(u)**2: cosh overflows to inf for large |u|, and a stray inf * 0 is NaN.",
    "du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x**2), so dx = dout * (0.5 (1 + t) + 0.5 x (1 - t**2) "
    "sqrt(2/pi) (1 + 3 * 0.044715 x**2)).",
)

MODEL_ANSWER = """\
c = np.sqrt(2.0 / np.pi)
t = np.tanh(c * (x + 0.044715 * x ** 3))
du = c * (1.0 + 3 * 0.044715 * x ** 2)
return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t ** 2) * du)"""


def examples():
    rng = np.random.default_rng(4)
    grid = np.linspace(-4.0, 4.0, 9)
    big = np.array([-1000.0, -50.0, -10.0, 0.0, 10.0, 50.0, 1000.0])
    return [
        ("x from -4 to 4, dout = 1", (np.ones(9), grid)),
        ("x from -4 to 4, random dout", (rounded(rng, (9,)), grid)),
        ("a (2, 3, 4) batch", (rounded(rng, (2, 3, 4)), rounded(rng, (2, 3, 4), 2.0))),
        ("large |x| (up to 1000)", (rounded(rng, (7,)), big)),
    ]


def strategy():
    st, hnp = hyp()

    @st.composite
    def inputs(draw):
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
        scale = draw(st.sampled_from([1.0, 5.0, 1e3]))    # 1e3: where cosh overflows
        return draw(array(shape, -3.0, 3.0)), draw(array(shape, -1.0, 1.0)) * scale

    return inputs()


def _parts(x):
    t = np.tanh(C * (x + 0.044715 * x ** 3))
    return t, C * (1.0 + 3 * 0.044715 * x ** 2)


def _erf_grad(x):
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * (1.0 + erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _nonfinite(outcome):
    if nonfinite_where_finite(outcome):
        return ("NaN/inf in your output at large |x|: write tanh' as 1 - t**2, never 1 / cosh(u)**2 "
                "(cosh overflows to inf, and inf * 0 is NaN).")
    return None


EXERCISE = Exercise(
    name="gelu_backward",
    summary="GELU (tanh approximation) backward",
    arg_names=("dout", "x"), outputs=("dx",), reference=reference,
    statement=STATEMENT, stub_function=STUB, hints=HINTS, model_answer=MODEL_ANSWER,
    examples_fn=examples, strategy=strategy,
    detectors=[_nonfinite],
    mistakes=[
        ("GPT-2 uses the tanh approximation of GELU, not the exact erf form (they differ by up to ~1e-3): "
         "differentiate 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x**3))).",
         lambda d, x: d * _erf_grad(x)),
        ("multiply by dout: the chain rule gives dx = dout * gelu'(x).",
         lambda d, x: 0.5 * (1 + _parts(x)[0]) + 0.5 * x * (1 - _parts(x)[0] ** 2) * _parts(x)[1]),
        ("product rule: x also appears inside tanh, so gelu'(x) has a second term, from the derivative of "
         "tanh(u), besides 0.5 (1 + t).",
         lambda d, x: d * 0.5 * (1 + _parts(x)[0])),
        ("du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x**2): the derivative of x**3 is 3 x**2.",
         lambda d, x: d * (0.5 * (1 + _parts(x)[0])
                           + 0.5 * x * (1 - _parts(x)[0] ** 2) * C * (1 + 0.044715 * x ** 2))),
        ("that is dout * gelu(x), the forward; the exercise asks for dout times the DERIVATIVE gelu'(x).",
         lambda d, x: d * 0.5 * x * (1 + _parts(x)[0])),
    ],
)
