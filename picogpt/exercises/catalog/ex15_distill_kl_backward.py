"""Exercise `distill_kl_backward`: the gradient of the distillation loss over the student's logits."""

import numpy as np

from ... import distill as DI
from ..exercise import Exercise
from .common import array, floats, hyp, overflow_detector, rounded, softmax


def reference(student, teacher, T):
    N = student.shape[0]
    _, cache = DI.kl_forward(student, teacher, T, np.full(N, 1.0 / N))
    return DI.kl_backward(T * T, cache)


STATEMENT = """\
## Exercise `distill_kl_backward`

Implement `distill_kl_backward(student, teacher, T)`: the gradient of the distillation loss
(Hinton et al., 2015) with respect to the student's logits. A small student learns from a big
teacher's softened distribution over the next token: the teacher is not trained.

- `student`, `teacher`: `(N, V)` logits, one row per position; `T > 0` the temperature.
- returns `dstudent`: `(N, V)`.

      p_t = softmax(teacher / T),   p_s = softmax(student / T)      (row by row)
      KL(p_t || p_s) = sum_v p_t[v] (log p_t[v] - log p_s[v])
      loss = T**2 * (1/N) sum_n KL(p_t[n] || p_s[n])

Derive `d loss / d student[n, j]` by hand first: like cross-entropy's, it has a short closed
form with no logarithm left in it. Logits of size 1000 occur: your function must not overflow.

{check}
"""

STUB = '''\
def distill_kl_backward(student, teacher, T):
    """Gradient of T^2 * mean over rows of KL(softmax(teacher / T) || softmax(student / T)).

    student, teacher (N, V), T > 0  ->  dstudent (N, V)
    """
    raise NotImplementedError("your code here")
'''

HINTS = (
    "only log p_s depends on the student, and sum_v p_t[v] log p_t[v] is a constant. Write "
    "log p_s[v] = s[v]/T - log sum_u exp(s[u]/T) and differentiate -sum_v p_t[v] log p_s[v] with respect to s[j]; "
    "remember that p_t sums to 1.",
    "d KL / d s[j] = (p_s[j] - p_t[j]) / T, like cross-entropy's softmax minus one-hot with the teacher's "
    "distribution as the target, and 1/T from the division inside the softmax. Then the loss's T**2 and 1/N.",
    "dstudent = T * (softmax(student / T) - softmax(teacher / T)) / N, each softmax stable (subtract the row max).",
)

MODEL_ANSWER = """\
def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
N = student.shape[0]
return T * (softmax(student / T) - softmax(teacher / T)) / N"""


def examples():
    rng = np.random.default_rng(15)
    return [
        ("one row, T = 1", (np.array([[1.0, 2.0, 3.0]]), np.array([[3.0, 2.0, 1.0]]), 1.0)),
        ("two rows, T = 1.5", (rounded(rng, (2, 4)), rounded(rng, (2, 4)), 1.5)),
        ("the same logits (the gradient is zero)", (np.array([[0.5, -1.0, 2.0]]), np.array([[0.5, -1.0, 2.0]]), 3.0)),
        ("large logits (1e3 scale), T = 0.5", (np.array([[1000.0, 0.0, -1000.0]]), np.array([[0.0, 1000.0, 0.0]]), 0.5)),
    ]


def strategy():
    st, _ = hyp()

    @st.composite
    def inputs(draw):
        N, V = draw(st.integers(1, 5)), draw(st.integers(2, 8))
        scale = draw(st.sampled_from([1.0, 10.0, 1e3]))
        return (draw(array((N, V), -1.0, 1.0)) * scale, draw(array((N, V), -1.0, 1.0)) * scale, draw(floats(0.5, 5.0)))

    return inputs()


def _variant(student, teacher, T, t_power=1, mean=True, swap=False, temper=True):
    """The gradient with the classic mistakes switched on."""
    d = T if temper else 1.0
    ps, pt = softmax(student / d), softmax(teacher / d)
    g = (pt - ps) if swap else (ps - pt)
    g = g * T ** t_power
    return g / student.shape[0] if mean else g


EXERCISE = Exercise(
    name="distill_kl_backward",
    summary="distillation: gradient of T^2 KL(teacher || student) over the student's logits",
    arg_names=("student", "teacher", "T"), outputs=("dstudent",), reference=reference,
    statement=STATEMENT, stub_function=STUB, hints=HINTS, model_answer=MODEL_ANSWER,
    examples_fn=examples, strategy=strategy,
    detectors=[overflow_detector],
    mistakes=[
        ("the loss has T**2 in front and the softmax divides by T inside: the gradient keeps one factor T, "
         "not T**2.", lambda s, t, T: _variant(s, t, T, t_power=2)),
        ("the softmax divides the logits by T, so its derivative brings a 1/T: the T**2 in front leaves T, not 1.",
         lambda s, t, T: _variant(s, t, T, t_power=0)),
        ("the loss is the MEAN over the N rows: divide by N.", lambda s, t, T: _variant(s, t, T, mean=False)),
        ("the sign: the loss falls when p_s moves toward p_t, so the gradient is p_s - p_t (times T / N).",
         lambda s, t, T: _variant(s, t, T, swap=True)),
        ("both distributions are softened by the temperature: softmax(logits / T), not softmax(logits).",
         lambda s, t, T: _variant(s, t, T, temper=False)),
    ],
)
