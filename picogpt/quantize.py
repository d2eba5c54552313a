"""Int8 weight quantization: store each projection matrix in one byte per number, and see what it costs.

Symmetric, per output channel. A Conv1D weight W (in, out) computes y_j = sum_i x_i W[i, j], so
column j feeds output j. Each column gets its own scale

    s_j = max_i |W[i, j]| / 127,    q[i, j] = round(W[i, j] / s_j)  in [-127, 127]  (int8)
    W[i, j] ~ q[i, j] * s_j,        |W[i, j] - q[i, j] s_j| <= s_j / 2

Symmetric (no zero point) because trained weights are centred on zero; per column because the
columns' ranges differ a lot, and one scale for the whole matrix would spend the 255 levels of
the widest column on the narrow ones too. -128 is left unused so that q and -q are both int8.

The scale factors out of the matrix product, which is why this layout is the one int8 kernels use:

    x @ (q * s) = (x @ q) * s          (s broadcast over the output columns)

`quantize_model` does not run int8 kernels: it returns a float copy whose projection weights are
replaced by their dequantized values q * s. The copy's outputs therefore show exactly what the
rounding costs in quality, with the ordinary forward pass. `quantized_size_bytes` says what the
model would take stored that way.

The tied embedding `wte` (V, C) is used both ways: as a lookup table (rows) and as the LM head
x @ wte^T, whose output channel v is row v. Its scales are therefore per row (axis=1). It is
left in float unless include_wte=True: it is a third of a small model, but the logits read it
directly, so its rounding shows most.
"""

import re

import numpy as np

from .backend import get_array_module
from .errors import PicoGPTError
from .model import GPT2

QMAX = 127  # symmetric int8: q in [-127, 127]

# The 2-D projection matrices of every block (Conv1D layout (in, out)).
_PROJECTION = re.compile(r"^h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")


def _scale_dtype(dtype):
    """Scales are float32, or float64 for float64 weights (gradient-check precision)."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def quantize_int8(W, axis=0):
    """Symmetric int8 quantization with one scale per output channel.

    W: a float matrix. axis: the axis the maximum is taken over (the input axis): 0 for a Conv1D
    weight (in, out), giving scale (out,); 1 for wte (V, C) used as the LM head, giving scale (V,).
    Returns (q int8 shaped like W, scale float (n_channels,)). A channel that is all zeros gets
    scale 0 and q 0, so it dequantizes to exactly zero.
    """
    xp = get_array_module(W)
    if W.ndim != 2:
        raise PicoGPTError(f"quantize_int8 takes a matrix, got shape {tuple(W.shape)}.")
    if axis not in (0, 1):
        raise PicoGPTError(f"axis must be 0 or 1 for a matrix, got {axis}.")
    Wf = W.astype(_scale_dtype(W.dtype), copy=False)
    if not bool(xp.isfinite(Wf).all()):
        raise PicoGPTError("the matrix contains NaN or infinite values: there is no scale for them.")
    scale = xp.abs(Wf).max(axis=axis) / QMAX                     # (n_channels,)
    safe = xp.where(scale > 0, scale, 1)                          # a zero channel: divide by 1, q = 0
    s = safe[None, :] if axis == 0 else safe[:, None]
    q = xp.clip(xp.rint(Wf / s), -QMAX, QMAX).astype(np.int8)
    return q, scale


def dequantize(q, scale, axis=0):
    """int8 q (in, out) and its scales (out,) -> q * scale in the scales' dtype, shaped like q.
    axis as in quantize_int8 (1: one scale per row)."""
    s = scale[None, :] if axis == 0 else scale[:, None]
    return q.astype(scale.dtype) * s


def quantized_names(params, include_wte=False):
    """The parameter names that quantize_model replaces: every block's projection weights,
    plus `wte.weight` when include_wte."""
    names = [k for k in params if _PROJECTION.match(k)]
    return names + (["wte.weight"] if include_wte and "wte.weight" in params else [])


def _axis(name):
    return 1 if name == "wte.weight" else 0


def quantize_model(model, include_wte=False):
    """A copy of `model` whose projection weights (and wte, if asked) are int8-rounded.

    Each weight W is replaced by dequantize(*quantize_int8(W)), in the model's own dtype and on
    its own device; everything else (biases, layer norms, wpe, LoRA adapters) is copied as is.
    The copy runs with the ordinary forward pass, so comparing its loss or logits with the
    original's measures exactly what the int8 rounding costs. Its `quantized` attribute names
    the weights that were rounded.
    """
    names = set(quantized_names(model.params, include_wte))
    params = {}
    for k, a in model.params.items():
        if k in names:
            q, scale = quantize_int8(a, axis=_axis(k))
            params[k] = dequantize(q, scale, axis=_axis(k)).astype(a.dtype)
        else:
            params[k] = a.copy()
    return GPT2(model.config, params, device=model.device, lora_scale=model.lora_scale, lora=model.lora,
                quantized=sorted(names), tokenizer=model.tokenizer)


def quantized_size_bytes(model, include_wte=False):
    """Bytes to store `model` with its projection weights (and wte, if asked) as int8 plus one
    float32 scale per output channel; every other parameter at its own dtype's size."""
    names = set(quantized_names(model.params, include_wte))
    total = 0
    for k, a in model.params.items():
        if k in names:
            n_channels = a.shape[1 - _axis(k)]
            total += int(a.size) * 1 + n_channels * 4
        else:
            total += int(a.size) * a.dtype.itemsize
    return total
