"""The dtype policy: which float types a model may use, and where float16 is widened.

float32 by default, float64 for gradient checks, float16 on the GPU only. Statistics of
float16 data (means, variances, exponentials) are taken in float32, where they do not overflow.
"""

import numpy as np

from .errors import PicoGPTError

DTYPES = ("float32", "float64", "float16")


def resolve_dtype(dtype, device):
    """A NumPy dtype from 'float32' | 'float64' | 'float16', checked against the device."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise PicoGPTError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}.")
    if name == "float16" and device != "gpu":
        # NumPy has no fast float16 matmul; it would be slower and less exact than float32.
        raise PicoGPTError("float16 is supported on the GPU only: use dtype float32 on the CPU.")
    return np.dtype(name)


def float32_if_half(x):
    """Statistics (means, variances, exponentials) of float16 data are taken in float32."""
    return x.astype(np.float32) if x.dtype == np.float16 else x
