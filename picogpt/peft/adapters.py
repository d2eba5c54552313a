"""Bottleneck adapters (Houlsby et al., 2019): a small MLP with a skip, inside every block.

An adapter takes a sublayer's output h (B, T, C), squeezes it through M << C numbers and adds
the result back:

    out = h + f(h Wd + bd) Wu + bu        Wd (C, M), bd (M,), Wu (M, C), bu (C,), f = GELU

Houlsby puts one after the attention and one after the MLP of every block, each before the
residual add (x = x + adapter(dropout(sublayer(x)))); Pfeiffer et al. (2021) found the one
after the MLP enough ("pfeiffer" below). Only the adapters train: 2 M C + M + C numbers each.

Initialised near the identity: Wd and Wu are small (N(0, 0.01^2), clipped at two standard
deviations, as Houlsby) and the biases zero, so the adapted model starts where the base is
and the skip carries the gradient from the first step.

Names sit in the block they belong to: h.{i}.adapter_attn.down.weight (C, M), .down.bias (M,),
.up.weight (M, C), .up.bias (C,); h.{i}.adapter_mlp.* alike. Conv1D's (in, out) layout.
"""

import numpy as np

from .. import layers as L
from ..errors import PicoGPTError
from . import remove_params

KINDS = {"houlsby": ("adapter_attn", "adapter_mlp"), "pfeiffer": ("adapter_mlp",)}
PARTS = ("down.weight", "down.bias", "up.weight", "up.bias")


def adapter_forward(h, Wd, bd, Wu, bu):
    """h (B, T, C) -> out (B, T, C) = h + gelu(h Wd + bd) Wu + bu, and the cache."""
    z, down = L.linear_forward(h, Wd, bd)      # (B, T, M)
    g, act = L.gelu_forward(z)
    u, up = L.linear_forward(g, Wu, bu)        # (B, T, C)
    return h + u, (down, act, up)


def adapter_backward(dout, cache):
    """dout (B, T, C) -> dh (B, T, C), dWd (C, M), dbd (M,), dWu (M, C), dbu (C,).

    The skip hands dout to h unchanged; the bottleneck is linear, GELU, linear read backwards:
        dWu = g^T dout,  dbu = sum dout,  dg = dout Wu^T,  dz = gelu'(z) dg,
        dWd = h^T dz,    dbd = sum dz,    dh = dout + dz Wd^T
    """
    down, act, up = cache
    dg, dWu, dbu = L.linear_backward(dout, up)
    dz = L.gelu_backward(dg, act)
    dh, dWd, dbd = L.linear_backward(dz, down)
    return dout + dh, dWd, dbd, dWu, dbu


def adapter_weights(params, name):
    """(Wd, bd, Wu, bu) of the adapter `name` (e.g. 'h.0.adapter_mlp'), or None if absent."""
    if name + ".down.weight" not in params:
        return None
    return tuple(params[f"{name}.{part}"] for part in PARTS)


def adapter_names(params):
    """The bottleneck-adapter parameter names present in `params`."""
    return [k for k in params if ".adapter_attn." in k or ".adapter_mlp." in k]


def adapter_kind(params):
    """'houlsby', 'pfeiffer' or None: which adapters `params` holds."""
    if "h.0.adapter_attn.down.weight" in params:
        return "houlsby"
    return "pfeiffer" if "h.0.adapter_mlp.down.weight" in params else None


def add_adapters(model, size, kind="houlsby", seed=0):
    """Attach bottleneck adapters of width `size` to every block of `model`, in place.

    kind: 'houlsby' (after attention and after the MLP) or 'pfeiffer' (after the MLP only).
    Returns the new parameter names.
    """
    if int(size) != size or size < 1:
        raise PicoGPTError(f"the adapter size must be a whole number >= 1, got {size}.")
    if kind not in KINDS:
        raise PicoGPTError(f"unknown adapter kind {kind!r}: choose houlsby or pfeiffer.")
    if adapter_names(model.params):
        raise PicoGPTError("this model already has bottleneck adapters.")
    rng = np.random.default_rng(seed)
    C, xp, dtype = model.config.n_embd, model.xp, model.dtype

    def small(shape):  # N(0, 0.01^2) clipped at two standard deviations (Houlsby's init)
        return xp.asarray(np.clip(rng.normal(0.0, 1e-2, shape), -2e-2, 2e-2).astype(dtype))

    names = []
    for i in range(model.config.n_layer):
        for where in KINDS[kind]:
            p = f"h.{i}.{where}."
            model.params[p + "down.weight"], model.params[p + "down.bias"] = small((C, size)), xp.zeros(size, dtype)
            model.params[p + "up.weight"], model.params[p + "up.bias"] = small((size, C)), xp.zeros(C, dtype)
            names += [p + part for part in PARTS]
    return names


def remove_adapters(model):
    """Drop the bottleneck adapters from `model`, in place; returns the names removed."""
    return remove_params(model, adapter_names(model.params), "bottleneck adapters")
