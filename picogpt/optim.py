"""AdamW, the learning-rate schedule, and gradient clipping.

All three act on dicts keyed like `model.params`, in place, with the array module of the data.
"""

import math

from .backend import get_array_module
from .errors import PicoGPTError
from .layers import cache_slices, keep_freed_memory, slice_scratch


def decays(param):
    """Which parameters get weight decay: matrices (projections, embeddings, LoRA adapters) do;
    biases and layer-norm gains (1-D) don't, as in GPT-2 practice (nanoGPT, minGPT)."""
    return param.ndim >= 2


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW computes it:

        p <- p * (1 - lr * wd)                      (decay, only for `decays` parameters)
        m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2
        p <- p - lr * m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - b1^t),  v_hat = v / (1 - b2^t)

    Decay is "decoupled" because it shrinks the weights directly instead of being added to the
    gradient, where Adam's per-parameter scaling would distort it.
    """

    def __init__(self, params, names=None, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8):
        names = list(params) if names is None else list(names)
        if not all(0.0 <= b < 1.0 for b in betas):  # b = 1 divides by 1 - b^t = 0 below
            raise PicoGPTError(f"AdamW's betas must each be at least 0 and below 1, got {tuple(betas)}.")
        self.weight_decay, self.betas, self.eps = weight_decay, betas, eps
        self.m = {k: get_array_module(params[k]).zeros_like(params[k]) for k in names}
        self.v = {k: get_array_module(params[k]).zeros_like(params[k]) for k in names}
        self.decay = {k for k in names if decays(params[k])}
        self.t = 0
        keep_freed_memory()   # an optimizer means step after step of same-sized arrays: reuse their memory

    def step(self, params, grads, lr):
        """Update `params` in place from `grads` (only the names this optimizer was built for)."""
        self.t += 1
        for k, m in self.m.items():
            wd = self.weight_decay if k in self.decay else 0.0
            adamw_update(params[k], grads[k], m, self.v[k], lr, self.t, wd, self.betas, self.eps)

    def state_dict(self):
        """Arrays (name -> array) and scalars, for checkpoints."""
        arrays = {f"m:{k}": a for k, a in self.m.items()}
        arrays.update({f"v:{k}": a for k, a in self.v.items()})
        return arrays, {"t": self.t}

    def load_state_dict(self, arrays, scalars):
        xp = get_array_module(next(iter(self.m.values())))
        for k in self.m:
            self.m[k] = xp.array(arrays[f"m:{k}"], dtype=self.m[k].dtype)  # a copy: loaded arrays are read-only mmaps
            self.v[k] = xp.array(arrays[f"v:{k}"], dtype=self.v[k].dtype)
        self.t = int(scalars["t"])


def adamw_update(p, g, m, v, lr, t, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, decay=None):
    """One AdamW step (the maths in `AdamW`'s docstring) on arrays p, g, m, v of one shape, in place.

    `t` is the step number (1 for the first step), for the bias corrections 1 - b^t. `decay`, a
    bool array shaped like p, marks the numbers that get weight decay; None means all of them.
    AdamW.step calls this per tensor and ZeRO-1 (picogpt.parallel) on a slice of the flat buffer,
    so both give the same numbers, bit for bit.
    """
    xp = get_array_module(p)
    lr, (b1, b2) = float(lr), betas
    c1, c2 = 1.0 - b1 ** t, 1.0 - b2 ** t
    shrink = 1.0 - lr * weight_decay if weight_decay else None
    if not all(a.flags.c_contiguous for a in (p, g, m, v)):
        _adamw_formulas(xp, p, g, m, v, shrink, decay, b1, b2, c1, c2, lr, eps)
        return
    # The formulas slice by slice (whole arrays on a GPU): each slice's 12 passes run in cache,
    # so p, g, m and v are read from memory once instead of 12 times.
    p, g, m, v = (a.reshape(-1) for a in (p, g, m, v))
    decay = None if decay is None else decay.reshape(-1)
    slices = cache_slices(xp, p.size)
    s = slice_scratch(xp, slices, p.dtype)
    for a, b in slices:
        _adamw_formulas(xp, p[a:b], g[a:b], m[a:b], v[a:b], shrink, None if decay is None else decay[a:b],
                        b1, b2, c1, c2, lr, eps, s[:b - a])


def _adamw_formulas(xp, p, g, m, v, shrink, decay, b1, b2, c1, c2, lr, eps, s=None):
    """adamw_update's maths, in place, with one scratch array `s` (no other full-size temporary)."""
    if shrink is not None:
        p *= shrink if decay is None else xp.where(decay, shrink, 1.0).astype(p.dtype)
    s = xp.multiply(g, 1.0 - b1, out=s)
    m *= b1
    m += s                                   # m = b1 m + (1 - b1) g
    xp.multiply(g, g, out=s)
    s *= 1.0 - b2
    v *= b2
    v += s                                   # v = b2 v + (1 - b2) g^2
    # lr m_hat / (sqrt(v_hat) + eps) = (lr sqrt(c2) / c1) m / (sqrt(v) + eps sqrt(c2)): the same
    # number with the bias corrections folded into two scalars, one pass over the arrays fewer
    xp.sqrt(v, out=s)
    s += eps * math.sqrt(c2)
    xp.divide(m, s, out=s)
    s *= lr * math.sqrt(c2) / c1
    p -= s


def lr_at(step, lr, min_lr, warmup_steps, total_steps):
    """The learning rate at `step` (0-based): linear warmup to `lr` over `warmup_steps`, then
    cosine decay to `min_lr` at `total_steps` (and `min_lr` after)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    ratio = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def global_norm(grads):
    """sqrt of the sum of squares of every gradient entry, as a float: sqrt(sum(sum(g * g)))."""
    return math.sqrt(float(sum(sum_of_squares(g) for g in grads.values())))


def sum_of_squares(a):
    """sum(a * a) over every entry, summed in float64: a float on the CPU; on a GPU a 0-d device
    array, so that a sum of many stays on the device until one float() at the end.

    A float32 sum over wte's 38M numbers drifts in the 4th to 6th digit.
    """
    xp = get_array_module(a)
    flat = a.reshape(-1)
    if xp.__name__ == "numpy" and flat.dtype.itemsize >= 4:
        # slice by slice: each slice's squares summed pairwise (accurate in float32, where a
        # BLAS dot is not), the slices' sums added in float64; no temporary the size of a, and
        # ~25% faster than casting every number to float64 as the form below does
        slices = cache_slices(xp, flat.size)
        sq, total = slice_scratch(xp, slices, flat.dtype), 0.0
        for lo, hi in slices:
            s = xp.multiply(flat[lo:hi], flat[lo:hi], out=sq[:hi - lo])
            total += float(s.sum())
        return total
    # (float16 squares would overflow) cast in small buffers: no temporary the size of a
    return xp.einsum("i,i->", flat, flat, dtype="float64")


def clip_grad_norm(grads, max_norm):
    """Scale all gradients together so their global norm is at most `max_norm`; in place.

    Returns the norm before clipping. Same rule as torch.nn.utils.clip_grad_norm_: scale by
    max_norm / (norm + 1e-6) when that is below 1. Clipping by the global norm keeps the
    update's direction; clipping each tensor separately would not.
    """
    norm = global_norm(grads)
    scale = max_norm / (norm + 1e-6)
    if scale < 1.0:
        for g in grads.values():
            g *= scale
    return norm
