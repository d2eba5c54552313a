"""Head gates (Michel et al., 2019, "Are Sixteen Heads Really Better than One?").

A gate is one number per attention head that multiplies the head's output before the heads
are merged and projected by c_proj. With every gate at 1 the model is unchanged; a gate at 0
removes that head. The gradient of the loss with respect to a gate says how much the loss
would change if the head were scaled down: |dL/dgate| (summed over batches) is the head's
importance, and the least important heads are the ones picogpt.prune removes.

In the parameter dict a gate is `h.{i}.attn.head_gate` (H,); model.block_forward applies it
when present.
"""

from .backend import get_array_module

GATE = "attn.head_gate"


def gate_name(i):
    """The parameter name of layer i's head gates."""
    return f"h.{i}.{GATE}"


def head_gate_forward(a, gate):
    """a (B, H, T, D) the heads' outputs, gate (H,) -> out (B, H, T, D).

        out[b, h, t, :] = gate[h] * a[b, h, t, :]
    """
    return a * gate[:, None, None], (a, gate)


def head_gate_backward(dout, cache):
    """dout (B, H, T, D) -> (da (B, H, T, D), dgate (H,)).

        da = gate[h] * dout,   dgate[h] = sum over b, t, d of a[b, h, t, d] * dout[b, h, t, d]
    (each gate touches every position of its head, so its gradient sums over all of them).
    """
    a, gate = cache
    xp = get_array_module(a)
    dgate = xp.einsum("bhtd,bhtd->h", a, dout)
    return dout * gate[:, None, None], dgate
