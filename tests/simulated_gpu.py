"""A stand-in for CuPy made of NumPy, so that the GPU tests can run where there is no GPU.

It checks what a machine without a GPU can check about the GPU path: that device arrays and host
arrays never mix. CuPy enforces that rule, and breaking it is the commonest GPU-only bug:

    device + host array            TypeError  (CuPy: "Unsupported type <class 'numpy.ndarray'>")
    numpy.asarray(device array)    TypeError  (CuPy: implicit conversion to NumPy is not allowed)
    xp.where(device, host, ...)    TypeError  (an xp function handed a host array)

What crosses is allowed, as in CuPy: `xp.asarray(host)` / `xp.array(host)` (host to device),
`asnumpy(device)` and `float()` / `int()` / `bool()` / `.item()` / `.tolist()` (device to
host), host arrays as indices, and host values written into a device array by `a[i] = v`.
Python and NumPy scalars mix with device arrays freely, as in CuPy.

It cannot check CuPy's own API (a function or keyword CuPy lacks), its kernels, or speed: the
arithmetic underneath is NumPy's, so results equal the CPU's exactly. It is a test of the
host/device discipline, not a GPU.

Installed by tests/conftest.py when PICOGPT_SIMULATED_GPU=1, before picogpt is imported:

    PICOGPT_SIMULATED_GPU=1 python -m pytest -m gpu
"""

import sys
import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

# xp functions that take host data on purpose: they are the host-to-device copy.
TRANSFERS = {"asarray", "array", "asanyarray"}


class HostDeviceMix(TypeError):
    """A host (NumPy) array met a device array where CuPy would refuse it."""


class DeviceArray(NDArrayOperatorsMixin):
    """An array that lives on the simulated device: a NumPy array inside, refusing host arrays."""

    __slots__ = ("_a",)

    def __init__(self, a):
        self._a = a

    # --- what CuPy refuses --------------------------------------------------------------

    def __array__(self, dtype=None, copy=None):
        raise HostDeviceMix("implicit conversion of a device array to NumPy (use picogpt.asnumpy)")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        args = [_device_operand(x, f"numpy.{ufunc.__name__}") for x in inputs]
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(_device_operand(o, f"numpy.{ufunc.__name__}(out=)") for o in out)
        result = getattr(ufunc, method)(*args, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        # CuPy answers numpy.<func>(device array) with cupy.<func>; so does this.
        return _call(func, func.__name__, args, kwargs)

    # --- what crosses, as in CuPy ---------------------------------------------------------

    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        self._a[_index(key)] = _inner(value)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        return self._a.__index__()

    def __bool__(self):
        return bool(self._a)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(x) for x in self._a)

    def __repr__(self):
        return f"device_array({self._a!r})"

    def get(self):
        return self._a.copy()

    # Everything else (shape, dtype, T, reshape, sum, astype, ...) is NumPy's, with device
    # results and host arguments refused.
    def __getattr__(self, name):
        if name.startswith("__"):  # __array_interface__ & co. would hand NumPy the data silently
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if callable(attr):
            return lambda *args, **kwargs: _call(attr, f"ndarray.{name}", args, kwargs)
        return _wrap(attr)


def _device_operand(x, where):
    """The NumPy array inside a device operand; a host array there is the bug we look for."""
    if isinstance(x, DeviceArray):
        return x._a
    if isinstance(x, np.ndarray):
        raise HostDeviceMix(f"{where}: a host array {x.shape} {x.dtype} mixed with device arrays")
    return x


def _unwrap(x, where):
    """Device arrays inside (nested) arguments -> their NumPy arrays; host arrays refused."""
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, where) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v, where) for k, v in x.items()}
    return _device_operand(x, where)


def _wrap(x):
    """NumPy results -> device arrays. Scalars become 0-d device arrays, as CuPy returns them."""
    if isinstance(x, np.ndarray):
        return DeviceArray(x)
    if isinstance(x, np.generic):
        return DeviceArray(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _inner(x):
    """The NumPy array inside a device array; anything else as it is."""
    return x._a if isinstance(x, DeviceArray) else x


def _index(key):
    """Indices may be device arrays or host data (CuPy copies host index arrays over)."""
    return tuple(_index(k) for k in key) if isinstance(key, tuple) else _inner(key)


def _call(func, where, args, kwargs):
    return _wrap(func(*_unwrap(args, where), **_unwrap(kwargs, where)))


class _Generator:
    """cupy.random.Generator: NumPy's generator, its draws made on the device."""

    def __init__(self, seed):
        self._g = np.random.default_rng(seed)

    def __getattr__(self, name):
        method = getattr(self._g, name)
        return lambda *args, **kwargs: _wrap(method(*args, **kwargs))


class _Module(types.ModuleType):
    """`cupy`: NumPy's names, whose functions take and give device arrays."""

    ndarray = DeviceArray

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        obj = getattr(np, name)
        if isinstance(obj, (type, np.ufunc)) or not callable(obj):
            return obj                        # dtypes, ufuncs (they dispatch themselves), constants
        if name in TRANSFERS:
            return lambda a, *args, **kwargs: _wrap(obj(_inner(a), *args, **kwargs))
        return lambda *args, **kwargs: _call(obj, f"xp.{name}", args, kwargs)

    @staticmethod
    def get_array_module(*arrays):
        return sys.modules["cupy"] if any(isinstance(a, DeviceArray) for a in arrays) else np

    @staticmethod
    def asnumpy(a):
        return a._a.copy() if isinstance(a, DeviceArray) else np.asarray(a)


def install():
    """Put the simulated `cupy` in sys.modules (before picogpt is imported)."""
    cupy = _Module("cupy", "a NumPy-backed stand-in for CuPy (tests/simulated_gpu.py)")
    cupy.__version__ = "simulated"
    cupy.random = types.SimpleNamespace(default_rng=_Generator)
    stream = types.SimpleNamespace(synchronize=lambda: None)
    cupy.cuda = types.SimpleNamespace(
        Stream=types.SimpleNamespace(null=stream),
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1,
                                      getDeviceProperties=lambda i: {"name": b"simulated device"}))
    sys.modules["cupy"] = cupy
