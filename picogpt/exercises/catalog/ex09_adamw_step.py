"""Exercise `adamw_step`: one step of AdamW, bias correction worked out by the student."""

import numpy as np

from ...optim import AdamW
from ..exercise import Exercise
from .common import array, floats, hyp, rounded


def reference(p, g, m, v, t, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
    params = {"p": p.copy()}
    opt = AdamW(params, weight_decay=weight_decay, betas=tuple(betas), eps=eps)
    opt.m["p"], opt.v["p"] = m.copy(), v.copy()
    opt.decay = {"p"}          # the exercise decays p whatever its shape (AdamW spares 1-D ones)
    opt.t = t - 1              # step() counts the step it takes: this one is number t
    opt.step(params, {"p": g}, lr)
    return params["p"], opt.m["p"], opt.v["p"]


STATEMENT = """\
## Exercise `adamw_step`

Implement `adamw_step(p, g, m, v, t, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)`:
one step of AdamW (Adam with decoupled weight decay, as `torch.optim.AdamW` computes it).

- `p`: a parameter array; `g`: its gradient; `m`, `v`: the running first and second moments;
  all the same shape. `t`: the number of this step, 1 on the first. `lr`, `betas = (b1, b2)`,
  `eps`, `weight_decay`: floats.
- returns `(p, m, v)`, the updated arrays (new arrays, or the same ones updated in place; `g`
  must be left as it is).

      p = p * (1 - lr * weight_decay)          decoupled decay, first
      m = b1 * m + (1 - b1) * g                running mean of the gradients
      v = b2 * v + (1 - b2) * g**2             running mean of their squares
      m_hat, v_hat = m and v, bias-corrected   (work this out, see below)
      p = p - lr * m_hat / (sqrt(v_hat) + eps)

Bias correction: `m` and `v` start at 0, so during the first steps they are too small, even
when every gradient is the same. Work out what `m` is after `t` steps that all saw the same
gradient `g`, starting from `m = 0`; `m_hat` divides `m` by the factor you find, so that it
equals `g` in that case (and likewise `v_hat` with `b2` and `g**2`).

{check}
"""

STUB = '''\
def adamw_step(p, g, m, v, t, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
    """One AdamW step (decoupled weight decay, bias-corrected moments).

    p, g, m, v: arrays of one shape; t: this step's number (1 first)  ->  (p, m, v) updated
        p *= 1 - lr * weight_decay;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g**2
        p -= lr * m_hat / (sqrt(v_hat) + eps),  m_hat and v_hat bias-corrected
    """
    raise NotImplementedError("your code here")
'''

HINTS = (
    "unroll the recurrence from m = 0 with the same g at every step: after t steps, "
    "m = (1 - b1) g (1 + b1 + b1**2 + ... + b1**(t - 1)). Sum the geometric series.",
    "the sum is (1 - b1**t) / (1 - b1), so m = (1 - b1**t) g: m_hat = m / (1 - b1**t), and "
    "v_hat = v / (1 - b2**t). Use the NEW m and v, after this step's update.",
    "p = p * (1 - lr * weight_decay), then p = p - lr * m_hat / (np.sqrt(v_hat) + eps): eps goes OUTSIDE "
    "the square root. On step t = 1 with m = v = 0, each entry moves by about lr, against the sign of g.",
)

MODEL_ANSWER = """\
b1, b2 = betas
p = p * (1.0 - lr * weight_decay)                         # decoupled decay, first
m = b1 * m + (1.0 - b1) * g
v = b2 * v + (1.0 - b2) * g * g
m_hat = m / (1.0 - b1 ** t)
v_hat = v / (1.0 - b2 ** t)
p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
return p, m, v"""


def examples():
    rng = np.random.default_rng(7)
    p, g = rounded(rng, (2, 3)), rounded(rng, (2, 3))
    m, v = rounded(rng, (2, 3), 0.1), np.round(rng.random((2, 3)) * 0.1, 3)
    def zeros():     # m and v must be two arrays: a function may update them in place
        return np.zeros((2, 3))

    return [
        ("the first step (t = 1, m = v = 0)", (p, g, zeros(), zeros(), 1, 1e-3, (0.9, 0.95), 1e-8, 0.1)),
        ("a later step (t = 10) with moments", (p, g, m, v, 10, 1e-2, (0.9, 0.95), 1e-8, 0.1)),
        ("no weight decay", (p, g, m, v, 3, 1e-2, (0.9, 0.999), 1e-8, 0.0)),
        ("tiny gradients (1e-7), where eps matters", (p, g * 1e-7, zeros(), zeros(), 1, 1e-3, (0.9, 0.95), 1e-8, 0.1)),
        ("a large lr and weight decay", (p, g, m, v, 5, 0.1, (0.8, 0.99), 1e-6, 0.5)),
        ("step 10000 (bias correction ~ 1)", (p, g, m, v, 10000, 1e-3, (0.9, 0.95), 1e-8, 0.1)),
    ]


def strategy():
    st, hnp = hyp()

    @st.composite
    def inputs(draw):
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=4))
        p, m = draw(array(shape, -3.0, 3.0)), draw(array(shape, -1.0, 1.0))
        g = draw(array(shape, -3.0, 3.0)) * draw(st.sampled_from([1.0, 1e-3, 1e-7]))
        v = draw(array(shape, 0.0, 1.0)) * draw(st.sampled_from([1.0, 1e-6, 0.0]))
        t, lr = draw(st.integers(1, 1000)), draw(floats(1e-4, 0.1))
        betas = draw(st.sampled_from([(0.9, 0.95), (0.9, 0.999), (0.8, 0.99)]))
        eps, wd = draw(st.sampled_from([1e-8, 1e-6])), draw(st.sampled_from([0.0, 0.01, 0.1, 0.5]))
        return p, g, m, v, t, lr, betas, eps, wd

    return inputs()


def _variant(p, g, m, v, t, lr, betas, eps, wd, correct=True, decay="first", eps_inside=False,
             t_shift=0, swap_betas=False):
    """The step with the classic mistakes switched on."""
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


T_HINT = ("t is the number of THIS step (1 on the first): after t updates from 0, the bias is a function of "
          "b1**t and b2**t, with this step's t.")

EXERCISE = Exercise(
    name="adamw_step",
    summary="one AdamW step: decoupled weight decay, bias-corrected moments",
    arg_names=("p", "g", "m", "v", "t", "lr", "betas", "eps", "weight_decay"), outputs=("p", "m", "v"),
    reference=reference, statement=STATEMENT, stub_function=STUB, hints=HINTS, model_answer=MODEL_ANSWER,
    examples_fn=examples, strategy=strategy, may_modify=("p", "m", "v"),
    mistakes=[
        ("bias-correct the moments: m and v start at 0, so early on they are too small "
         "(`python -m picogpt.exercises hint adamw_step 1`).",
         lambda *a: _variant(*a, correct=False)),
        ("the decay is decoupled: multiply p by (1 - lr * weight_decay); do not add weight_decay * p to the "
         "gradient (that is Adam with L2, not AdamW).", lambda *a: _variant(*a, decay="l2")),
        ("the decay is scaled by the learning rate: p *= 1 - lr * weight_decay.",
         lambda *a: _variant(*a, decay="no lr")),
        ("decay p before the Adam update, as torch.optim.AdamW does (p *= 1 - lr * weight_decay first).",
         lambda *a: _variant(*a, decay="last")),
        ("eps goes outside the square root: sqrt(v_hat) + eps.", lambda *a: _variant(*a, eps_inside=True)),
        (T_HINT, lambda *a: _variant(*a, t_shift=1)),
        (T_HINT, lambda *a: _variant(*a, t_shift=-1)),
        ("b1 = betas[0] goes with m (the gradients), b2 = betas[1] with v (their squares).",
         lambda *a: _variant(*a, swap_betas=True)),
    ],
    output_hints={
        "m": "m = b1 * m + (1 - b1) * g, with b1 = betas[0].",
        "v": "v = b2 * v + (1 - b2) * g**2, with b2 = betas[1].",
        "p": "p = p * (1 - lr * weight_decay) - lr * m_hat / (sqrt(v_hat) + eps), with the NEW m and v.",
    },
)
