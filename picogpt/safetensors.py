"""Reading and writing the safetensors format with NumPy alone (no torch, no extra package).

A .safetensors file is
    8 bytes    little-endian uint64 N, the header's length
    N bytes    JSON: {name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...,
               "__metadata__": {...}}, padded with spaces
    the data   each tensor's raw little-endian bytes at [begin, end) of this region
Reading memory-maps the file, so a 6 GB checkpoint is not read twice.
"""

import json
from pathlib import Path

import numpy as np

from .errors import PicoGPTError
from .files import atomic_open

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,  # bf16 widened below
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
CODES = {np.dtype(v): k for k, v in DTYPES.items() if k != "BF16"}
MAX_HEADER = 100 * 1024 * 1024


def _corrupt(path, why):
    return PicoGPTError(f"{path} is truncated or corrupt ({why}): delete it and download or save it again.")


def read_header(path):
    """(header dict without __metadata__, metadata dict, offset of the data region)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _corrupt(path, "shorter than 8 bytes")
        n = int.from_bytes(head, "little")
        if n > min(MAX_HEADER, size - 8):
            raise _corrupt(path, f"header length {n} does not fit in a {size}-byte file")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _corrupt(path, f"unreadable header: {e}") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    data_len = size - 8 - n
    for name, info in header.items():
        try:
            dt = np.dtype(DTYPES[info["dtype"]])
            begin, end = (int(o) for o in info["data_offsets"])
            count = int(np.prod(info["shape"], dtype=np.int64))
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"bad entry for tensor {name!r}") from None
        if not 0 <= begin <= end <= data_len:
            raise _corrupt(path, f"tensor {name!r} lies beyond the end of the file")
        if end - begin != count * dt.itemsize:
            raise _corrupt(path, f"tensor {name!r} has {end - begin} bytes for shape {info['shape']}")
    return header, meta, 8 + n


def load(path, keep=None):
    """name -> NumPy array for every tensor (or those for which keep(name) is true).

    The arrays are read-only views into a memory map; BF16 is widened to float32.
    """
    path = Path(path)
    if not path.is_file():
        raise PicoGPTError(f"no safetensors file at {path}.")
    header, _, start = read_header(path)
    if not header:
        return {}
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if keep is not None and not keep(name):
            continue
        begin, end = info["data_offsets"]
        raw = buf[start + begin:start + end]
        if info["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            a = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = raw.view(np.dtype(DTYPES[info["dtype"]]).newbyteorder("<"))
        out[name] = a.reshape(info["shape"])
    return out


def save(tensors, path, metadata=None):
    """Write name -> NumPy array to `path`, atomically (see files.atomic_open)."""
    path = Path(path)
    header, offset, arrays = {}, 0, []
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        if a.dtype not in CODES:
            raise PicoGPTError(f"cannot store dtype {a.dtype} of {name!r} in safetensors.")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": CODES[a.dtype.newbyteorder("=")], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data region starts 8-byte aligned
    with atomic_open(path) as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for a in arrays:
            f.write(a.reshape(-1).view(np.uint8))
