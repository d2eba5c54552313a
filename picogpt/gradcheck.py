"""Finite-difference gradient checking: is my backward right?

A backward pass is a formula derived by hand. A finite difference is the definition of the
derivative, evaluated. When the two agree to many digits at random points, the formula is right;
when they disagree, the report says which input and which entry to look at.

Central differences
    Nudge one input entry x_i by a small step h both ways and watch the scalar loss f:

        df/dx_i  ~  D(h) = (f(x + h e_i) - f(x - h e_i)) / 2h

    Subtracting the two Taylor series cancels the even terms, so D(h) = f' + c h^2 + O(h^4),
    against an error of h f'' / 2 for the one-sided (f(x + h) - f(x)) / h. One step further
    (Richardson): D(2h) = f' + 4 c h^2 + O(h^4), so (4 D(h) - D(2h)) / 3 = f' + O(h^4). That
    is the default here (richardson=True, four evaluations of f per entry instead of two); it
    allows a larger step, h = 1e-4, and a larger step means less rounding noise (next section).
    Checking is slow, one entry at a time: use small shapes, or check a random sample of
    `max_elements` entries of each big input.

Why float64
    A finite difference divides a difference of two nearly equal numbers by a small h, so the
    rounding error of f, about u |f| with u the machine epsilon, is magnified by 1/h. In float64
    (u = 2.2e-16) with h = 1e-4 that is about 1e-12 |f|, and the truncation error is about
    h^4 = 1e-16: a correct backward agrees to 1e-9 or better. In float32 (u = 1.2e-7) the
    rounding term is 1e-3 |f| at the same step and no step brings the total much below 1e-5:
    enough to hide a forgotten small term, and nowhere near the 1e-6 a check should demand.
    So every input is copied to float64 (the function must compute in its inputs' dtype, as
    every picogpt op does), and float32 or float16 inputs are refused unless
    allow_float32=True says that casting them is intended.

Reading the report
    One line per input: how many entries were checked, the worst relative error

        rel = |analytic - numeric| / max(|analytic|, |numeric|, floor)

    and where it happens (the index into that input) with both values there. The check passes
    when every rel <= tol (default 1e-6). A correct float64 backward typically gives 1e-9 or
    less; 1e-2 means a bug. The floor keeps a ratio of two tiny numbers from crying wolf; it is
    the largest of:
      - `floor` (1e-3) times the largest gradient entry in the check: an entry a thousand
        times smaller than the largest is judged against that scale, not its own;
      - the resolution of the finite difference divided by tol: f is only known to a few
        ulps, so no change of f smaller than 4 u |f| can be seen and no error below
        4 u |f| / h can be measured (|f| is the loss, or the sum of |terms| when fn returns them);
      - `min_floor` (1e-5), an absolute last resort for functions whose gradients are all tiny
        (a saturated softmax), lower it if your whole loss is tiny.
    A hint is added when the pattern is telling: analytic / numeric the same constant on every
    entry (a missing factor, or -1: a sign), or an analytic gradient that is zero where the
    numeric one is not (the gradient never reaches that input).

Two entry points:

    check_gradients(fn, inputs, analytic)   any scalar function and its hand-written gradients
    check_op(forward, backward, inputs)      an op with picogpt's (out, cache) / (dout, cache) pairing

>>> import numpy as np
>>> from picogpt.gradcheck import check_gradients, check_op
>>> x = np.linspace(-1.0, 1.0, 5)
>>> check_gradients(lambda x: (x ** 3).sum(), x, 3 * x ** 2).ok
True
>>> a, b = np.arange(3.0), np.ones(3)
>>> bool(check_gradients(lambda d: (d["a"] * d["b"]).sum(), {"a": a, "b": b}, {"a": b, "b": a}))
True
>>> from picogpt import layers as L
>>> check_op(L.gelu_forward, L.gelu_backward, [np.linspace(-4.0, 4.0, 9)]).ok
True
>>> wrong = lambda dout, cache: 1.01 * L.gelu_backward(dout, cache)
>>> result = check_op(L.gelu_forward, wrong, [np.linspace(-4.0, 4.0, 9)])
>>> result.ok, result.worst.name
(False, 'x')
>>> print(result)  # doctest: +ELLIPSIS
gradcheck FAILED: worst relative error 9.9e-03 > tolerance 1.0e-06
...
  hint: analytic / numeric = 1.01 on every checked entry of 'x': a constant factor is off.
...
"""

import inspect
import math
from dataclasses import dataclass, field

import numpy as np

from .backend import asnumpy, get_array_module

__all__ = ["check_gradients", "check_op", "GradcheckResult", "InputCheck"]

_U = float(np.finfo(np.float64).eps)  # 2.2e-16, the spacing of float64 numbers near 1


@dataclass
class InputCheck:
    """The verdict on one input: its worst entry and the values there."""

    name: str
    rel_error: float      # the worst relative error over the checked entries
    index: tuple          # where it occurs (an index into the input)
    analytic: float       # the hand-written gradient there
    numeric: float        # the finite difference there
    checked: int          # how many entries were checked
    size: int             # how many entries the input has
    hint: str = ""        # a telling pattern (see `_hint`), or ""


@dataclass
class GradcheckResult:
    """What check_gradients found: truthy (and `.ok`) when every relative error is <= tol."""

    inputs: dict          # name -> InputCheck
    tol: float
    eps: float
    floor: float          # the absolute floor that was used (see the module docstring)
    richardson: bool = True
    failures: list = field(default_factory=list)  # names of the inputs with an entry above tol

    @property
    def ok(self):
        return not self.failures

    def __bool__(self):
        return self.ok

    @property
    def worst(self):
        """The InputCheck with the largest relative error."""
        return max(self.inputs.values(), key=lambda c: c.rel_error)

    @property
    def max_rel_error(self):
        return self.worst.rel_error if self.inputs else 0.0

    def report(self):
        verdict, sign = ("passed", "<=") if self.ok else ("FAILED", ">")
        lines = [f"gradcheck {verdict}: worst relative error {self.max_rel_error:.1e} {sign} tolerance {self.tol:.1e}"]
        width = max([5] + [len(name) for name in self.inputs])
        lines.append(f"  {'input':<{width}}  {'checked':>11}  {'max rel err':>11}  {'analytic':>13}"
                     f"  {'numeric':>13}  at index")
        for c in self.inputs.values():
            flag = "   <- FAIL" if c.name in self.failures else ""
            checked = f"{c.checked}/{c.size}"
            lines.append(f"  {c.name:<{width}}  {checked:>11}  {c.rel_error:>11.1e}  {c.analytic:>13.6e}"
                         f"  {c.numeric:>13.6e}  {c.index}{flag}")
        lines += [f"  hint: {self.inputs[name].hint}" for name in self.failures if self.inputs[name].hint]
        method = "Richardson-extrapolated central differences" if self.richardson else "central differences"
        lines.append(f"  (rel = |analytic - numeric| / max(|analytic|, |numeric|, {self.floor:.1e}); "
                     f"{method}, step {self.eps:g})")
        return "\n".join(lines)

    __str__ = report

    def __repr__(self):
        return f"<GradcheckResult ok={self.ok} max_rel_error={self.max_rel_error:.2e}>"


# --- the two entry points -----------------------------------------------------------------

def check_gradients(fn, inputs, analytic, *, eps=1e-4, tol=1e-6, floor=1e-3, min_floor=1e-5, richardson=True,
                    max_elements=None, seed=0, allow_float32=False):
    """Compare hand-written gradients with finite differences of `fn`.

    fn: inputs -> the loss. It may return a scalar, or an array whose sum is the loss; an array
        is better, because two evaluations are then subtracted entry by entry before the sum,
        which keeps the rounding of a large sum out of the difference.
    inputs: dict name -> float array (NumPy or CuPy), and fn is called with such a dict; or a
        single array, and fn is called with the array. They are copied to float64 first; the
        caller's arrays are never modified. Keep what is not differentiated (token ids, masks,
        the seed of a dropout generator) inside fn.
    analytic: the gradients of the loss, shaped like `inputs` (a dict with every name, or one
        array), or a callable that computes them from the float64 copies of the inputs.
    eps: the step h.  tol: the largest relative error that passes.
    floor, min_floor: see "Reading the report" in the module docstring.
    richardson: cancel the h^2 error of central differences (4 evaluations per entry, not 2).
    max_elements: check at most this many entries per input, a random sample drawn with `seed`.
    allow_float32: cast float32/float16 inputs to float64 instead of refusing them.

    Returns a GradcheckResult: truthy when every entry is within tol; print it for the report.
    """
    single = not isinstance(inputs, dict)
    if single:
        inputs, call = {"x": inputs}, (lambda d: fn(d["x"]))
    else:
        call = fn
    xs = {name: _float64_copy(name, a, allow_float32) for name, a in inputs.items()}

    if callable(analytic):
        analytic = analytic(xs["x"] if single else xs)
    if single:
        analytic = {"x": analytic}
    grads = {name: _host_gradient(name, analytic, x) for name, x in xs.items()}

    # Everything below assumes that fn is a function of its inputs alone.
    f0 = asnumpy(_evaluate(call, xs))
    if not np.array_equal(f0, asnumpy(_evaluate(call, xs))):
        raise ValueError("fn returned two different values for the same inputs, so finite differences "
                         "mean nothing: if it uses randomness (dropout), build the random generator inside "
                         "fn from a fixed seed, so that every call draws the same numbers.")

    rng = np.random.default_rng(seed)
    found = {}
    for name, x in xs.items():
        idx = np.arange(x.size)
        if max_elements is not None and x.size > max_elements:
            idx = np.sort(rng.choice(x.size, size=max_elements, replace=False))
        numeric = np.array([_numeric_derivative(call, xs, x, int(i), eps, richardson) for i in idx])
        found[name] = (idx, grads[name].reshape(-1)[idx], numeric)

    largest = max([0.0] + [float(np.abs(np.concatenate([a, n])).max(initial=0)) for _, a, n in found.values()])
    resolution = 4 * _U * float(np.abs(f0).sum()) / eps
    abs_floor = max(floor * largest, resolution / tol, min_floor)

    checks, failures = {}, []
    for name, (idx, a, n) in found.items():
        rel = _relative_error(a, n, abs_floor)
        w = int(np.argmax(rel)) if rel.size else 0
        checks[name] = InputCheck(
            name=name, checked=int(idx.size), size=int(xs[name].size),
            rel_error=float(rel[w]) if rel.size else 0.0,
            index=tuple(int(j) for j in np.unravel_index(idx[w], xs[name].shape)) if rel.size else (),
            analytic=float(a[w]) if rel.size else 0.0, numeric=float(n[w]) if rel.size else 0.0,
            hint=_hint(name, a, n, abs_floor))
        if rel.size and not rel.max() <= tol:  # written so that NaN fails
            failures.append(name)
    return GradcheckResult(inputs=checks, tol=tol, eps=eps, floor=abs_floor, richardson=richardson,
                           failures=failures)


def check_op(forward, backward, inputs, wrt=None, *, seed=0, **options):
    """Check an op written in picogpt's pairing: out, cache = forward(*inputs), then
    grads = backward(dout, cache).

    A random upstream gradient `dout` (seeded, standard normal, shaped like out) turns the op
    into the scalar loss = sum(out * dout), whose gradient is exactly what backward(dout, cache)
    must return. So every backward, whatever the shape of its output, is checked through one loss.

    inputs: the positional arguments of forward, arrays or not (a single array is one argument).
        Fix other arguments and any randomness with a closure. Dropout needs a generator made
        from the same seed in every call, so that every evaluation drops the same entries:
            forward = lambda x: L.dropout_forward(x, 0.1, np.random.default_rng(0))
        A forward that returns a bare array (split_heads) is read as (out, None).
    wrt: the positions in `inputs` of the arrays that backward returns gradients for, in its
        order. Default: every floating-point array among the inputs. Trailing None gradients
        (a linear without bias returns db = None) are ignored.
    options: passed on to check_gradients (eps, tol, floor, min_floor, richardson, max_elements,
        allow_float32). Inputs are reported under forward's own argument names.
    """
    args = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    names = _argument_names(forward, len(args))
    if wrt is None:
        wrt = [i for i, a in enumerate(args) if _is_float_array(a)]
    for i, a in enumerate(args):
        if _is_float_array(a):
            args[i] = _float64_copy(names[i], a, options.get("allow_float32", False))

    out, cache = _split(forward(*args))
    xp = get_array_module(out)
    # A stream of its own ([seed, 1], not seed): inputs drawn with default_rng(0) must not come
    # back as dout, which would make the check degenerate (a layer norm's dx is ~0 when dout ~ x).
    dout = xp.asarray(np.random.default_rng([seed, 1]).standard_normal(np.shape(out)))
    grads = backward(dout.copy(), cache)
    grads = list(grads) if isinstance(grads, (list, tuple)) else [grads]
    while len(grads) > len(wrt) and grads[-1] is None:
        grads.pop()
    if len(grads) != len(wrt):
        raise ValueError(f"backward returned {len(grads)} gradients for {len(wrt)} inputs "
                         f"({', '.join(names[i] for i in wrt)}): pass wrt= to say which inputs they belong to.")

    def loss_terms(perturbed):  # out * dout: its sum is the loss
        call = list(args)
        for i in wrt:
            call[i] = perturbed[names[i]]
        return _split(forward(*call))[0] * dout

    analytic = {names[i]: g for i, g in zip(wrt, grads)}
    return check_gradients(loss_terms, {names[i]: args[i] for i in wrt}, analytic, seed=seed, **options)


# --- helpers ------------------------------------------------------------------------------

def _numeric_derivative(call, xs, x, i, eps, richardson):
    """The central difference D(h) for entry i, or with `richardson` (4 D(h) - D(2h)) / 3."""
    d1 = _central_difference(call, xs, x, i, eps)
    if not richardson:
        return d1
    return (4.0 * d1 - _central_difference(call, xs, x, i, 2.0 * eps)) / 3.0


def _central_difference(call, xs, x, i, h):
    """(f(x + h e_i) - f(x - h e_i)) / 2h for the flat entry i of x, which is restored afterwards."""
    flat = x.reshape(-1)  # a view: x is C-ordered (see _float64_copy)
    orig = float(flat[i])
    up, down = orig + h, orig - h
    try:
        flat[i] = up
        f_up = _evaluate(call, xs)
        flat[i] = down
        f_down = _evaluate(call, xs)
    finally:
        flat[i] = orig
    # Divide by the step actually taken: orig + h is rounded when stored (by 1e-13 at |x| ~ 1000).
    return float((f_up - f_down).sum()) / (up - down)


def _evaluate(call, xs):
    """fn at the current inputs, as a new float64 array (a scalar, or the loss terms)."""
    out = call(xs)
    return get_array_module(out).array(out, dtype=np.float64, copy=True)


def _is_float_array(a):
    return hasattr(a, "dtype") and hasattr(a, "shape") and np.dtype(a.dtype).kind == "f"


def _float64_copy(name, a, allow_float32):
    """A C-ordered float64 copy of `a`, on a's device: it is perturbed in place, never the caller's."""
    if not _is_float_array(a):
        kind = f"{type(a).__name__}" + (f" of {a.dtype}" if hasattr(a, "dtype") else "")
        raise TypeError(f"input {name!r} is a {kind}, not a floating-point array: keep integer ids and "
                        "other fixed arguments inside the function.")
    if a.dtype != np.float64 and not allow_float32:
        raise TypeError(f"input {name!r} is {a.dtype}: finite differences need float64, whose rounding is a "
                        "billionth of float32's. Convert the inputs (and the model) to float64, or pass "
                        "allow_float32=True to have them cast.")
    return get_array_module(a).array(a, dtype=np.float64, order="C", copy=True)


def _host_gradient(name, analytic, x):
    """analytic[name], checked against x's shape, as a float64 NumPy copy (perturbing x cannot change it)."""
    g = analytic.get(name)
    if g is None:
        raise ValueError(f"no analytic gradient for input {name!r}.")
    if tuple(np.shape(g)) != tuple(x.shape):
        raise ValueError(f"the analytic gradient of {name!r} has shape {tuple(np.shape(g))}, but {name!r} has "
                         f"shape {tuple(x.shape)}: a gradient has its input's shape.")
    return np.array(asnumpy(g), dtype=np.float64)


def _relative_error(a, n, abs_floor):
    diff = np.abs(a - n)
    rel = diff / np.maximum(np.maximum(np.abs(a), np.abs(n)), abs_floor)
    rel[diff == 0] = 0.0
    rel[~np.isfinite(rel)] = np.inf  # a NaN or an infinite gradient fails
    return rel


def _hint(name, a, n, abs_floor):
    """A sentence for the two most telling patterns of a wrong backward, or ""."""
    big = np.abs(n) > abs_floor
    if not big.any() or not np.all(np.isfinite(a)):
        return ""
    if np.all(a[big] == 0):
        return (f"the analytic gradient of {name!r} is zero where the numeric one is not: "
                "does the gradient reach this input at all?")
    ratio = a[big] / n[big]
    r = float(np.median(ratio))
    if abs(r - 1) > 1e-4 and np.all(np.abs(ratio - r) <= 1e-4 * abs(r)):
        what = "the sign is flipped" if math.isclose(r, -1, rel_tol=1e-4) else "a constant factor is off"
        return f"analytic / numeric = {r:.4g} on every checked entry of {name!r}: {what}."
    return ""


def _split(result):
    """forward's result as (out, cache); a bare array has no cache."""
    if isinstance(result, tuple) and len(result) == 2:
        return result
    return result, None


def _argument_names(forward, n):
    """Names for forward's first n positional arguments: its own where it has them."""
    try:
        params = [p for p in inspect.signature(forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:n]]
    return names + [f"input{i}" for i in range(len(names), n)]
