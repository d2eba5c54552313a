"""Data-parallel training throughput: 1 rank against N ranks on this machine, and the bytes all-reduced.

    python bench/parallel.py                         # gpt2-tiny, 8 x 128 tokens per rank, 1 and 2 ranks
    python bench/parallel.py --ranks 1 2 4 --zero 1  # more ranks, ZeRO-1

Each configuration runs as a real job, `mpiexec -n N python bench/parallel.py --worker ...`, with
one BLAS / OpenMP thread per rank (set before NumPy loads), so N ranks use N cores and one rank
uses one: the comparison is fair, cores for cores. Every rank keeps --batch-size rows (weak
scaling: the global batch grows with N), so the ideal is N times the tokens per second of one
rank; scaling efficiency = measured / ideal.

Also printed: the bytes of the flat gradient buffer all-reduced per step, what a ring all-reduce
sends per rank (2 (N-1)/N of it), and the all-reduce alone timed on that buffer, so the
communication's share of a step is visible.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# One BLAS thread per rank, before NumPy loads (workers inherit it from the launcher too).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout

import numpy as np  # noqa: E402

from picogpt import parallel as P  # noqa: E402
from picogpt.data import prepare  # noqa: E402
from picogpt.train import TrainConfig, Trainer  # noqa: E402


def worker(args):
    """One rank: build the trainer, time --steps steps after --warmup, time the all-reduce alone."""
    world = P.world()
    with P.loud_failure(world):
        cfg = TrainConfig(data=args.data, out=args.out, model=args.model, batch_size=args.batch_size,
                          block_size=args.block_size, steps=args.warmup + args.steps, warmup_steps=1,
                          eval_interval=10**9, log_interval=10**9, zero=args.zero, device="cpu")
        trainer = Trainer(cfg, log=lambda *a, **k: None, world=world)
        seconds = [trainer.step()["seconds"] for _ in range(args.warmup + args.steps)][args.warmup:]
        buf = np.zeros(trainer.layout.padded, dtype=np.float32)
        reduce_s = []
        for _ in range(5):
            world.barrier()
            t0 = time.perf_counter()
            world.allreduce(buf)
            reduce_s.append(time.perf_counter() - t0)
        if world.is_root:
            step = statistics.median(seconds)
            tokens = args.batch_size * world.size * trainer.block_size
            print(json.dumps({"ranks": world.size, "tokens_per_step": tokens, "step_s": step,
                              "step_s_range": [min(seconds), max(seconds)], "tokens_per_s": tokens / step,
                              "params": trainer.layout.size, "allreduce_bytes": buf.nbytes,
                              "allreduce_s": statistics.median(reduce_s), "zero": args.zero,
                              "optimizer_bytes_per_rank": _opt_bytes(trainer)}))


def _opt_bytes(trainer):
    opt = trainer.opt
    return opt.nbytes() if hasattr(opt, "nbytes") else P.adamw_nbytes(trainer.model.params, trainer.trainable)


def launch(args, n, data, out):
    mpiexec = Path(sys.executable).with_name("mpiexec")
    cmd = [str(mpiexec if mpiexec.exists() else "mpiexec"), "-n", str(n), sys.executable, __file__, "--worker",
           "--data", data, "--out", out, "--model", args.model, "--batch-size", str(args.batch_size),
           "--block-size", str(args.block_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--zero", str(args.zero)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--model", default="gpt2-tiny")
    p.add_argument("--batch-size", type=int, default=8, help="rows per rank per step (default 8)")
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--zero", type=int, default=0, choices=[0, 1])
    p.add_argument("--text", default=str(ROOT / "examples" / "shakespeare.txt"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory() as tmp:
        prepare(args.text, Path(tmp) / "data")
        rows = [launch(args, n, str(Path(tmp) / "data"), str(Path(tmp) / f"out{n}")) for n in args.ranks]
    base = rows[0]["tokens_per_s"] / rows[0]["ranks"]
    print(f"{args.model}, {args.batch_size} x {args.block_size} tokens per rank per step, 1 BLAS thread per rank, "
          f"ZeRO-{args.zero}; {os.cpu_count()} cores; median of {args.steps} steps after {args.warmup}")
    print("| ranks | tokens/step | step (s) | tokens/s | scaling efficiency | all-reduced per step | ring sends per rank "
          "| all-reduce alone (s) | optimizer state per rank |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        n = r["ranks"]
        ring = 2 * (n - 1) / n * r["allreduce_bytes"]
        print(f"| {n} | {r['tokens_per_step']:,} | {r['step_s']:.3f} ({r['step_s_range'][0]:.3f}-{r['step_s_range'][1]:.3f}) "
              f"| {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / (base * n):.0%} | {r['allreduce_bytes'] / 1e6:.1f} MB "
              f"| {ring / 1e6:.1f} MB | {r['allreduce_s']:.4f} | {r['optimizer_bytes_per_rank'] / 1e6:.1f} MB |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
