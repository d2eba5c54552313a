"""The CPU/GPU switch: which array module to use, and moving arrays between devices.

The maths never asks "am I on the GPU?". Each op calls `get_array_module(x)` and gets
NumPy for NumPy arrays and CuPy for CuPy arrays, so the same lines run on both. This file
is the only place that knows CuPy exists.
"""

import os

import numpy as np

from .errors import PicoGPTError  # re-exported: `from picogpt.backend import PicoGPTError` still works

try:  # CuPy is optional: `pip install ".[gpu]"` in a clone of picogpt
    import cupy as _cupy
except Exception:  # ImportError, or a CuPy that cannot find its CUDA libraries
    _cupy = None

DEVICES = ("cpu", "gpu")


def get_array_module(*arrays):
    """NumPy or CuPy, whichever the arrays belong to (NumPy when CuPy is absent)."""
    if all(isinstance(a, np.ndarray) for a in arrays):
        return np                # the common CPU case first: cupy.get_array_module costs ~7 us a call
    if _cupy is not None:
        return _cupy.get_array_module(*arrays)
    return np


def gpu_available():
    """True when CuPy imports and sees at least one CUDA device."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, no device: CuPy raises CUDARuntimeError
        return False


def resolve_device(device=None):
    """'cpu' or 'gpu' from the argument, else $PICOGPT_DEVICE, else 'cpu'; checked."""
    device = (device or os.environ.get("PICOGPT_DEVICE") or "cpu").lower()
    if device == "cuda":
        device = "gpu"
    if device not in DEVICES:
        raise PicoGPTError(f"unknown device {device!r}: use 'cpu' or 'gpu'.")
    if device == "gpu":
        if _cupy is None:
            raise PicoGPTError(
                "the GPU was asked for but CuPy is not installed: "
                "run `pip install \".[gpu]\"` in your clone of picogpt (or install the cupy-cudaXXx wheel matching your CUDA), "
                "or use --device cpu."
            )
        if not gpu_available():
            raise PicoGPTError("the GPU was asked for but CuPy finds no CUDA device: use --device cpu.")
    return device


def xp_for(device):
    """The array module that lives on `device` ('cpu' -> NumPy, 'gpu' -> CuPy)."""
    return _cupy if resolve_device(device) == "gpu" else np


def asnumpy(x):
    """Any array (NumPy, CuPy, a list, a scalar) -> a NumPy array on the host."""
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        return _cupy.asnumpy(x)
    return np.asarray(x)


def to_device(x, device, dtype=None):
    """Copy/convert an array onto `device` ('cpu' or 'gpu'), optionally casting to `dtype`."""
    xp = xp_for(device)
    if xp is np:
        x = asnumpy(x)
    else:
        x = xp.asarray(x)
    return x if dtype is None else x.astype(dtype, copy=False)


def make_rng(xp, seed=None):
    """A seeded random Generator of the given array module (NumPy's and CuPy's share `random`'s
    names, not its numbers: one seed draws other numbers on a GPU, so dropout masks differ there)."""
    return xp.random.default_rng(seed)


def scatter_add(a, indices, values):
    """a[indices] += values, summing repeated indices. a (V, ...), indices int (N,), values (N, ...).

    NumPy: add.at, which adds the rows one after another. On the GPU, CuPy's own scatter_add adds
    them with atomics, in an order that changes from run to run, so GPU training would not repeat
    itself bit for bit; instead the indices are sorted (stably), each run of equal ones is summed
    in float64 (add.reduceat), and each sum is added once to its row: the same result every run.
    """
    xp = get_array_module(a)
    if xp is np:
        np.add.at(a, indices, values)
        return
    if indices.size == 0:
        return
    order = xp.argsort(indices, kind="stable")
    idx = indices[order]
    starts = xp.flatnonzero(xp.concatenate([xp.ones(1, dtype=bool), idx[1:] != idx[:-1]]))
    sums = xp.add.reduceat(values[order], starts, axis=0, dtype=xp.float64)
    a[idx[starts]] += sums.astype(a.dtype)


def synchronize(xp):
    """Wait for queued GPU work (a no-op on NumPy); needed for honest timings."""
    if xp is not np:
        xp.cuda.Stream.null.synchronize()


def set_tf32(enabled):
    """Let CuPy's float32 matmuls use TF32 tensor cores (10-bit mantissa products, float32 sums).

    CuPy reads the CUPY_TF32 environment variable the first time it picks a cuBLAS compute
    type; setting the compute type as well makes the switch work after a first matmul too.
    It does nothing on NumPy.
    """
    os.environ["CUPY_TF32"] = "1" if enabled else "0"
    if _cupy is None:
        return
    try:  # CuPy's own switch; private, so tolerate its absence in other CuPy versions
        from cupy._core import _routines_linalg as linalg

        mode = linalg.COMPUTE_TYPE_TF32 if enabled else linalg.COMPUTE_TYPE_DEFAULT
        linalg.set_compute_type(np.float32, mode)
    except (ImportError, AttributeError):
        pass
