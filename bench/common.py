"""Shared pieces of the benchmarks: thread pinning, interleaved timing, the peer, output.

Every benchmark times picogpt and its peer in the same process, alternating call by call
(A B, B A, A B, ...), so that a neighbour's load or a clock change hits both sides alike;
it reports the median and the range over the repeats, and the ratio peer time / picogpt time
of each repeat (>= 1 means picogpt is at least as fast).
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _threads_from_argv(default=1):
    """--threads N from the command line, read before NumPy starts (see below)."""
    argv = sys.argv
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return default


# OpenBLAS, OpenMP and MKL read their thread counts once, when the library loads: set them
# before NumPy (OpenBLAS) and torch (OpenMP + MKL) are imported, so both sides get the same.
THREADS = _threads_from_argv()
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import numpy as np  # noqa: E402

from picogpt.backend import gpu_available, synchronize  # noqa: E402


def add_threads_arg(parser):
    parser.add_argument("--threads", type=int, default=THREADS,
                        help="BLAS / OpenMP threads for both sides (default 1; read before NumPy loads)")


def blas_line():
    """NumPy's BLAS, its kernel and thread count (through threadpoolctl when installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return f"numpy BLAS threads {os.environ['OPENBLAS_NUM_THREADS']} (install threadpoolctl to see the kernel)"
    parts = [f"{i['internal_api']} {i.get('version')} kernel {i.get('architecture')} threads {i['num_threads']}"
             for i in threadpool_info() if i["user_api"] == "blas" and "numpy" in i["filepath"]]
    return "numpy BLAS: " + ("; ".join(parts) or "unknown")


def machine():
    """One line describing where the numbers were measured, and how loaded the machine was."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    line = f"{cpu}, {os.cpu_count()} cores, load {load}, numpy {np.__version__}, {blas_line()}"
    if gpu_available():
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        line += f"; GPU {props['name'].decode()}, cupy {cupy.__version__}"
    return line


def interleaved(fns, repeats=5, warmup=1):
    """Time each of `fns` (name -> (fn, sync)) `repeats` times, alternating between them.

    The order flips every repeat (A B, B A, ...) so neither side always runs right after the
    other. sync() waits for queued GPU work. Returns name -> {"wall": [...], "cpu": [...]}:
    seconds of wall-clock time and of this process's CPU time (user + system, all threads),
    one per repeat. On a machine shared with other work the CPU time is the steadier figure.
    """
    names = list(fns)
    for name in names:
        fn, sync = fns[name]
        for _ in range(warmup):
            fn()
        sync()
    times = {name: {"wall": [], "cpu": []} for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn, sync = fns[name]
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            times[name]["wall"].append(time.perf_counter() - w0)
            times[name]["cpu"].append(time.process_time() - c0)
    return times


def run_alone(script, argv):
    """Run `script` with `argv` (plus --json) in a child process; return its result rows.

    Benchmarks run each configuration in a fresh interpreter: a second model in the same process
    runs at a different speed than the first (measured: the second of two identical char training
    runs favoured picogpt, 0.87 -> 1.27), so only the table is gathered in the parent.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.jsonl"
        subprocess.run([sys.executable, str(script), *map(str, argv), "--json", str(out)], check=True,
                       stdout=subprocess.DEVNULL)
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row in rows:
        row.pop("bench", None), row.pop("machine", None)
        print(row, flush=True)
    return rows


def projection_shapes(config):
    """(in, out) of every projection's matrix product in GPT-2's forward, in order: each block's
    four (c_attn, attention c_proj, c_fc, MLP c_proj), then the tied LM head (x wte^T: (C, V))."""
    C = config.n_embd
    return [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)] * config.n_layer + [(C, config.vocab_size)]


def ms_per_step(seconds, steps=1):
    """Milliseconds a step: the median of runs of `steps` steps each, in seconds, over `steps`."""
    return 1000 * statistics.median(seconds) / steps


def summary(seconds):
    """'median (min-max)' of a list of seconds, in milliseconds."""
    ms = [1000 * s for s in seconds]
    return f"{statistics.median(ms):,.1f} ms ({min(ms):,.1f}-{max(ms):,.1f})"


def ratios(peer, ours):
    """Per-repeat peer time / picogpt time as 'median (min-max)'."""
    r = [p / o for p, o in zip(peer, ours)]
    return f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})"


def xp_sync(xp):
    return lambda: synchronize(xp)


def import_torch(threads):
    """torch with `threads` intra-op threads, or None when torch is not installed (the peer is optional)."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def hf_peer(config, device, threads=THREADS):
    """(torch, transformers, torch device, a transformers GPT2Config like `config`), or None when
    torch / transformers are not installed or the device is missing: the peer is optional."""
    torch = import_torch(threads)
    try:
        import transformers
    except ImportError:
        return None
    if torch is None:
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
