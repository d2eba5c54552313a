"""Exercise `adapter_backward`: the gradients of a bottleneck adapter (Houlsby et al., 2019)."""

import math

import numpy as np

from ...peft import adapters as AD
from ..exercise import Exercise
from .common import array, hyp, rounded

C = math.sqrt(2.0 / math.pi)


def reference(dout, h, Wd, bd, Wu, bu):
    return AD.adapter_backward(dout, AD.adapter_forward(h, Wd, bd, Wu, bu)[1])


STATEMENT = """\
## Exercise `adapter_backward`

Implement `adapter_backward(dout, h, Wd, bd, Wu, bu)`: the gradients of a bottleneck adapter,
the few numbers that train in adapter fine-tuning while GPT-2 stays frozen.

The adapter squeezes a sublayer's output `h` through `M` numbers per position and adds the
result back (a skip connection):

      z = h @ Wd + bd          (B, T, M)    down-projection
      g = gelu(z)              (B, T, M)    GPT-2's tanh GELU: 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z**3)))
      out = h + g @ Wu + bu    (B, T, C)    up-projection, plus the skip

- `dout`, `h`: `(B, T, C)`; `Wd` `(C, M)`, `bd` `(M,)`, `Wu` `(M, C)`, `bu` `(C,)`.
- returns `(dh, dWd, dbd, dWu, dbu)`, each the shape of its input.

Recompute the forward, then go through it backwards, last line first. Every position (b, t)
uses the same weights: their gradients add up over all of them. `h` reaches `out` by two
paths. You may reuse your `gelu_backward` (exercise `gelu_backward`) for the middle line.

{check}
"""

STUB = '''\
def adapter_backward(dout, h, Wd, bd, Wu, bu):
    """Gradients of out = h + gelu(h @ Wd + bd) @ Wu + bu.

    dout, h (B, T, C); Wd (C, M), bd (M,), Wu (M, C), bu (C,)  ->  dh, dWd, dbd, dWu, dbu
    """
    raise NotImplementedError("your code here")
'''

HINTS = (
    "two rules: for Y = X @ W + b over rows, dW = X^T dY and db = dY summed over the rows, dX = dY W^T "
    "(flatten (B, T, .) to (B*T, .) for the weights); and a sum (the skip) hands its gradient to both "
    "of its terms unchanged.",
    "from the top: dWu = g^T dout, dbu = sum of dout, dg = dout Wu^T; then dz = dg * gelu'(z); then "
    "dWd = h^T dz, dbd = sum of dz. And dh gets two contributions: which?",
    "dh = dout + dz @ Wd^T: the skip passes dout straight through, the bottleneck adds dz Wd^T.",
)

MODEL_ANSWER = """\
z = h @ Wd + bd
t = np.tanh(np.sqrt(2.0 / np.pi) * (z + 0.044715 * z ** 3))
g = 0.5 * z * (1.0 + t)
dgelu = 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t ** 2) * np.sqrt(2.0 / np.pi) * (1.0 + 3 * 0.044715 * z ** 2)
C, M = Wd.shape
dWu = g.reshape(-1, M).T @ dout.reshape(-1, C)
dbu = dout.reshape(-1, C).sum(axis=0)
dz = (dout @ Wu.T) * dgelu
dWd = h.reshape(-1, C).T @ dz.reshape(-1, M)
dbd = dz.reshape(-1, M).sum(axis=0)
dh = dout + dz @ Wd.T
return dh, dWd, dbd, dWu, dbu"""


def examples():
    rng = np.random.default_rng(12)

    def case(B, T, Cn, M, scale=1.0):
        return (rounded(rng, (B, T, Cn)), rounded(rng, (B, T, Cn), scale), rounded(rng, (Cn, M)),
                rounded(rng, (M,)), rounded(rng, (M, Cn)), rounded(rng, (Cn,)))

    return [
        ("one position, C = 3, M = 2", case(1, 1, 3, 2)),
        ("a (2, 3, 4) batch, M = 2", case(2, 3, 4, 2)),
        ("M = 1 (the narrowest bottleneck)", case(1, 4, 5, 1)),
        ("large h (GELU saturates)", case(2, 2, 3, 2, scale=10.0)),
    ]


def strategy():
    st, _ = hyp()

    @st.composite
    def inputs(draw):
        B, T, Cn, M = (draw(st.integers(1, n)) for n in (2, 4, 5, 3))
        return (draw(array((B, T, Cn), -2.0, 2.0)), draw(array((B, T, Cn), -3.0, 3.0)), draw(array((Cn, M), -1.0, 1.0)),
                draw(array((M,), -1.0, 1.0)), draw(array((M, Cn), -1.0, 1.0)), draw(array((Cn,), -1.0, 1.0)))

    return inputs()


def _variant(dout, h, Wd, bd, Wu, bu, skip=True, act="gelu", use_z_for_dWu=False):
    """The backward with the classic mistakes switched on."""
    Cn, M = Wd.shape
    z = h @ Wd + bd
    t = np.tanh(C * (z + 0.044715 * z ** 3))
    g = 0.5 * z * (1.0 + t)
    dgelu = {"gelu": 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t ** 2) * C * (1.0 + 3 * 0.044715 * z ** 2),
             "none": np.ones_like(z), "half": 0.5 * (1.0 + t)}[act]
    dWu = (z if use_z_for_dWu else g).reshape(-1, M).T @ dout.reshape(-1, Cn)
    dbu = dout.reshape(-1, Cn).sum(axis=0)
    dz = (dout @ Wu.T) * dgelu
    dWd = h.reshape(-1, Cn).T @ dz.reshape(-1, M)
    dbd = dz.reshape(-1, M).sum(axis=0)
    dh = dz @ Wd.T + (dout if skip else 0.0)
    return dh, dWd, dbd, dWu, dbu


EXERCISE = Exercise(
    name="adapter_backward",
    summary="bottleneck adapter backward: dh, dWd, dbd, dWu, dbu",
    arg_names=("dout", "h", "Wd", "bd", "Wu", "bu"), outputs=("dh", "dWd", "dbd", "dWu", "dbu"), reference=reference,
    statement=STATEMENT, stub_function=STUB, hints=HINTS, model_answer=MODEL_ANSWER,
    examples_fn=examples, strategy=strategy,
    mistakes=[
        ("h reaches out twice: through the bottleneck and through the skip (out = h + ...), so dh also "
         "gets dout itself.", lambda *a: _variant(*a, skip=False)),
        ("go back through the GELU: dz = dg * gelu'(z), not dg.", lambda *a: _variant(*a, act="none")),
        ("gelu(z) = 0.5 z (1 + tanh(u)) is a product with z in both factors: gelu'(z) has a second term "
         "from tanh's derivative (exercise gelu_backward).", lambda *a: _variant(*a, act="half")),
        ("the up-projection's input is g = gelu(z), the activation, not z: dWu = g^T dout.",
         lambda *a: _variant(*a, use_z_for_dWu=True)),
    ],
    output_hints={
        "dbu": "bu is added at every position: dbu is dout summed over the batch and the positions.",
        "dbd": "bd is added at every position: dbd is dz summed over the batch and the positions.",
        "dWu": "dWu = g^T dout over all B*T positions, with g = gelu(h Wd + bd).",
        "dWd": "dWd = h^T dz over all B*T positions; dz is the gradient at the GELU's input.",
        "dh": "dh = dout (the skip) + dz Wd^T (the bottleneck).",
    },
)
