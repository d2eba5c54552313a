"""Shared pieces of the benchmarks: timing, the peer (torch / transformers) if installed, output."""

import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import numpy as np  # noqa: E402

from picogpt.backend import gpu_available, synchronize  # noqa: E402


def machine():
    """One line describing where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    line = f"{cpu}, {os.cpu_count()} cores, numpy {np.__version__}"
    if gpu_available():
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        line += f"; GPU {props['name'].decode()}, cupy {cupy.__version__}"
    return line


def time_it(fn, sync, repeats=3, warmup=1):
    """Best wall time of `repeats` calls (after `warmup` calls); sync() waits for queued GPU work."""
    for _ in range(warmup):
        fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def xp_sync(xp):
    return lambda: synchronize(xp)


def hf_peer(config, device):
    """(torch, transformers, torch device, a transformers GPT2Config like `config`), or None when
    torch / transformers are not installed or the device is missing: the peer is optional."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    transformers.logging.set_verbosity_error()
    tdev = "cuda" if device == "gpu" else "cpu"
    if tdev == "cuda" and not torch.cuda.is_available():
        return None
    hf = transformers.GPT2Config(n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                                 n_positions=config.n_ctx, vocab_size=config.vocab_size,
                                 attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)
    return torch, transformers, tdev, hf


def torch_sync(torch, tdev):
    return (lambda: torch.cuda.synchronize()) if tdev == "cuda" else (lambda: None)


def report(title, rows, json_path=None):
    """Print a table of dicts and optionally append them as JSON lines."""
    print(f"\n{title}\n{machine()}")
    keys = list(rows[0]) if rows else []
    widths = {k: max(len(k), *(len(_fmt(r.get(k))) for r in rows)) for k in keys}
    print("  ".join(k.rjust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(_fmt(r.get(k)).rjust(widths[k]) for k in keys))
    if json_path:
        with open(json_path, "a") as f:
            for r in rows:
                f.write(json.dumps({"bench": title, "machine": machine(), **r}) + "\n")


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)
