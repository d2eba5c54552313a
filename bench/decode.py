"""Decode speed: new tokens per second of greedy generation with a KV cache, against transformers.

GPT-2 124M shapes with random weights (no download needed), a 16-token prompt, 128 new tokens,
batch 1 and batch 16. When torch and transformers are installed, GPT2LMHeadModel.generate runs
in the same process, interleaved with picogpt call by call (eager PyTorch, its default
attention), with the same BLAS / OpenMP threads (--threads, default 1). The table gives the
median and range over the repeats and the ratio of the two times (>= 1: picogpt is faster).
Each batch size runs in a fresh process (common.run_alone).

At batch 1 a decode step reads every weight once, so memory bandwidth bounds it. The benchmark
measures this machine's read bandwidth (a 1 GB array summed in parts, one per thread) and reports
the fraction of it that picogpt's batch-1 decode reaches: (bytes of weights read per token /
seconds per token) / bandwidth.

On the CPU, with torch installed, the same run also times one decode step's matrix products
alone (GPT-2's 49 projections at `batch` rows, the LM head included), in NumPy as picogpt takes
them and in torch as transformers does, interleaved with the rest: set beside the step a goal
asks for (transformers' step / 1.5 for the 1.5x goal), they show how much of a step is the BLAS's,
whatever the code around the products does.

    python bench/decode.py                      # cpu, and gpu if available
    python bench/decode.py --batch 1 --repeats 9
    python bench/decode.py --device gpu --batch 1 16 --json results.jsonl

Goals picogpt sets itself: CPU >= 1.5x transformers at batch 1 and 16; GPU batch 1 >= 3x eager.
"""

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from common import (add_threads_arg, gpu_available, hf_peer, import_torch, interleaved, ms_per_step, projection_shapes,
                    ratios, report, run_alone, summary, torch_sync, xp_sync)
import numpy as np

from picogpt.backend import set_tf32, xp_for
from picogpt.config import get_config
from picogpt.generation import generate
from picogpt.model import GPT2, init_params
import picogpt.layers as L


def picogpt_run(config, device, batch, prompt_len, new, dtype):
    xp = xp_for(device)
    model = GPT2(config, init_params(config, xp, np.dtype(dtype), seed=0), device=device)
    prompt = np.random.default_rng(0).integers(0, config.vocab_size, (batch, prompt_len))
    return (lambda: generate(model, prompt, new, temperature=0.0, stop_at_eot=False)), xp_sync(xp)


def transformers_run(config, device, batch, prompt_len, new, dtype):
    peer = hf_peer(config, device)
    if peer is None:
        return None
    torch, transformers, tdev, hf_config = peer
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(hf_config).to(tdev, getattr(torch, dtype)).eval()
    prompt = torch.tensor(np.random.default_rng(0).integers(0, config.vocab_size, (batch, prompt_len)), device=tdev)
    mask = torch.ones_like(prompt)

    def run():
        with torch.no_grad():
            model.generate(prompt, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           pad_token_id=0, eos_token_id=None)

    return run, torch_sync(torch, tdev)


PRODUCT_STEPS = 16   # decode steps' products per timed call: long enough to time, short beside a run


def products_run(lib, config, batch, steps):
    """One decode step's matrix products alone, `steps` steps a call: `projection_shapes` at
    `batch` rows with random float32 weights, in NumPy through picogpt's own `linear_forward` (lib None) or in
    torch (lib = torch) as transformers takes them (x @ W; the LM head x @ wte^T)."""
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal(shape, dtype=np.float32) for shape in projection_shapes(config)[:-1]]
    head = rng.standard_normal((config.vocab_size, config.n_embd), dtype=np.float32)   # wte (V, C)
    xs = {n: rng.standard_normal((batch, n), dtype=np.float32) for n in {w.shape[0] for w in ws} | {config.n_embd}}
    if lib is None:
        def step():
            for W in ws:
                L.linear_forward(xs[W.shape[0]], W)
            L.linear_forward(xs[config.n_embd], head.T)
    else:
        ws, head = [lib.from_numpy(W) for W in ws], lib.from_numpy(head)
        xs = {n: lib.from_numpy(x) for n, x in xs.items()}

        def step():
            for W in ws:
                xs[W.shape[0]] @ W
            xs[config.n_embd] @ head.T

    def run():
        for _ in range(steps):
            step()

    return run, lambda: None


def read_bandwidth(threads, gigabytes=1.0, repeats=5):
    """Bytes per second at which this process reads a large float32 array with `threads` threads
    (median of `repeats` sums of `gigabytes` GB: far larger than any cache, so it is memory's
    speed). NumPy's sum uses one core, so each thread sums its own part (NumPy lets go of the
    GIL while it sums): one core alone cannot draw all of a machine's bandwidth, and the decode
    it is compared with reads the weights on `threads` BLAS threads."""
    a = np.ones(int(gigabytes * 2**30) // 4, dtype=np.float32)
    parts = np.array_split(a, threads)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.sum, parts))                   # fault the pages in before timing
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(np.sum, parts))
            seconds.append(time.perf_counter() - t0)
    return a.nbytes / statistics.median(seconds)


def weight_bytes_per_token(config, itemsize):
    """Bytes of weights one batch-1 decode step reads: every parameter once (wte twice over is
    not needed: its one looked-up row is negligible beside the LM head's full read), except
    the position table, of which one row is read."""
    return (config.num_params() - (config.n_ctx - 1) * config.n_embd) * itemsize


def measure(device, batch, config, bandwidth, args):
    """Time picogpt and transformers decoding at one device and batch size, in this process: one row."""
    shape = (config, device, batch, args.prompt_len, args.new_tokens, args.dtype)
    sides = {"picogpt": picogpt_run(*shape)}
    peer = None if args.no_peer else transformers_run(*shape)
    if peer is not None:
        sides["transformers"] = peer
    torch = import_torch(args.threads) if peer is not None and device == "cpu" and args.dtype == "float32" else None
    if torch is not None:   # the products alone, PRODUCT_STEPS steps a call
        sides["numpy products"] = products_run(None, config, batch, PRODUCT_STEPS)
        sides["torch products"] = products_run(torch, config, batch, PRODUCT_STEPS)
    t = interleaved(sides, args.repeats)
    ours, theirs = t["picogpt"]["wall"], t.get("transformers", {}).get("wall")
    tokens = batch * args.new_tokens
    row = {"device": device, "dtype": args.dtype, "batch": batch, "picogpt run": summary(ours),
           "picogpt tok/s": tokens / statistics.median(ours),
           "transformers run": summary(theirs) if theirs else None,
           "transformers tok/s": tokens / statistics.median(theirs) if theirs else None,
           "ratio": ratios(theirs, ours) if theirs else None, "of bandwidth": None}
    if device == "cpu" and batch == 1:
        per_token = statistics.median(ours) / args.new_tokens
        weights = weight_bytes_per_token(config, np.dtype(args.dtype).itemsize)
        row["of bandwidth"] = f"{weights / per_token / bandwidth:.0%}"
    if torch is not None:   # milliseconds per step: picogpt's, the 1.5x goal's, the products' alone
        row["picogpt ms/step"] = ms_per_step(ours, args.new_tokens)
        row["1.5x needs ms/step"] = ms_per_step(theirs, args.new_tokens) / 1.5
        row["products ms/step (numpy | torch)"] = (f"{ms_per_step(t['numpy products']['wall'], PRODUCT_STEPS):.1f} | "
                                                   f"{ms_per_step(t['torch products']['wall'], PRODUCT_STEPS):.1f}")
    print(row, flush=True)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", nargs="+", default=None, choices=["cpu", "gpu"], help="default: cpu, and gpu if available")
    p.add_argument("--batch", nargs="+", type=int, default=[1, 16])
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5, help="interleaved runs of each side (after one warm-up)")
    p.add_argument("--model", default="gpt2", help="config preset (random weights), default gpt2 (124M)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="float16: GPU only")
    p.add_argument("--no-peer", action="store_true", help="skip transformers even if installed")
    p.add_argument("--json", default=None, help="append the results to this JSON-lines file")
    p.add_argument("--bandwidth", type=float, default=None, help=argparse.SUPPRESS)   # GB/s, from the parent run
    add_threads_arg(p)
    args = p.parse_args()
    devices = args.device or (["cpu", "gpu"] if gpu_available() else ["cpu"])
    config = get_config(args.model)
    set_tf32(False)
    bandwidth = (args.bandwidth * 1e9 if args.bandwidth else read_bandwidth(args.threads)) if "cpu" in devices else None
    runs = [(device, batch) for device in devices for batch in args.batch]
    if len(runs) > 1:   # one process per device and batch (common.run_alone says why)
        rows = []
        for device, batch in runs:
            rows += run_alone(__file__, ["--device", device, "--batch", batch, "--prompt-len", args.prompt_len,
                                         "--new-tokens", args.new_tokens, "--repeats", args.repeats, "--model", args.model,
                                         "--dtype", args.dtype, "--threads", args.threads]
                              + (["--bandwidth", bandwidth / 1e9] if bandwidth else []) + (["--no-peer"] if args.no_peer else []))
    else:
        rows = [measure(*runs[0], config, bandwidth, args)]
    title = (f"decode: {args.model} shapes, random weights, prompt {args.prompt_len}, {args.new_tokens} new tokens, greedy, "
             f"{args.threads} thread(s); median (min-max) of {args.repeats} interleaved runs; "
             f"ratio = transformers time / picogpt time; ms/step: a run's time / new tokens (the prompt's "
             f"share included); products: the step's matrix products alone, NumPy as picogpt | torch as transformers")
    if bandwidth:
        title += (f"\nmemory read bandwidth (a 1 GB array summed, one part per thread): {bandwidth / 1e9:.1f} GB/s; "
                  f"weights read per batch-1 token: {weight_bytes_per_token(config, np.dtype(args.dtype).itemsize) / 1e6:.0f} MB")
    report(title, rows, args.json)


if __name__ == "__main__":
    main()
