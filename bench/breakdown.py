"""Where picogpt's time goes, op by op: one training step (bench/train.py's) or one decode step.

Every forward and backward function of picogpt.layers, and the optimizer's pieces (AdamW's
update, the gradient norm, clipping), runs inside a timer for the run. A timed call made inside
another timed call is part of the outer one (softmax inside attention counts as attention), so
the rows add up; what no timer covers (the model's glue between ops, Python itself) is the row
`other`. On a GPU each timer waits for the device before it starts and before it stops, so a row
is that op's own time, and the step, serialised this way, runs slower than it does untimed: the
untimed step is printed beside the timed one.

    python bench/breakdown.py --shape baby                    # a training step on the CPU
    python bench/breakdown.py --shape gpt2-1024 --device gpu  # the GPU shape
    python bench/breakdown.py --decode --batch 1              # GPT-2 124M generating (KV cache)

Shapes are bench/train.py's (char, char-recipe, baby, gpt2, gpt2-1024) and `tiny` (a smoke test).
The figures are picogpt's alone; bench/train.py and bench/decode.py time it against its peers.
"""

import argparse
import collections
import functools
import sys
import time
import types

from common import add_threads_arg, machine
import decode as bench_decode
import train as bench_train

from picogpt import layers as L
from picogpt import model as M
from picogpt import optim as O
from picogpt.backend import synchronize, xp_for
from picogpt.config import GPT2Config

SHAPES = {**bench_train.SHAPES,
          "tiny": (GPT2Config(n_layer=2, n_head=2, n_embd=32, n_ctx=80, vocab_size=50), 2, 80)}
OPTIMIZER = ("adamw_update", "global_norm", "clip_grad_norm")


class Timers:
    """Seconds and calls per op name; `wrap` makes a timed stand-in for a function."""

    def __init__(self, xp):
        self.xp, self.seconds, self.calls, self.inside = xp, collections.Counter(), collections.Counter(), False

    def wrap(self, name, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if self.inside:                       # part of the op already being timed
                return fn(*args, **kwargs)
            self.inside = True
            synchronize(self.xp)                  # the glue's queued GPU work is not this op's
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                synchronize(self.xp)
                self.seconds[name] += time.perf_counter() - t0
                self.calls[name] += 1
                self.inside = False
        return timed

    def clear(self):
        self.seconds.clear(), self.calls.clear()


def timed_functions():
    """name -> function: the ops of picogpt.layers and the optimizer's pieces."""
    ops = {name: fn for name, fn in vars(L).items()
           if callable(fn) and (name.endswith(("_forward", "_backward")) or name == "lm_head_cross_entropy")}
    ops.update({name: getattr(O, name) for name in OPTIMIZER})
    return ops


def install(timers, modules):
    """Put timed stand-ins wherever `modules` hold one of the functions: module globals (how
    layers, model and optim call each other) and tuples in dicts (model.GELU)."""
    timed = {fn: timers.wrap(name, fn) for name, fn in timed_functions().items()}
    for mod in modules:
        for name, value in list(vars(mod).items()):
            if isinstance(value, types.FunctionType) and value in timed:
                setattr(mod, name, timed[value])
            elif isinstance(value, dict):
                for k, v in list(value.items()):
                    if isinstance(v, tuple) and any(isinstance(f, types.FunctionType) and f in timed for f in v):
                        value[k] = tuple(timed.get(f, f) if isinstance(f, types.FunctionType) else f for f in v)


def training_step(shape, device):
    config, batch, block = SHAPES[shape]
    step, sync = bench_train.picogpt_step(config, device, batch, block)
    return step, sync, f"{shape}: training step, {config.n_layer} layers x {config.n_embd} wide, {batch} x {block}"


def decode_step(shape, batch, device, prompt_len=16, new_tokens=32):
    config = SHAPES[shape][0]
    step, sync = bench_decode.picogpt_run(config, device, batch, prompt_len, new_tokens, "float32")
    return step, sync, (f"{shape}: decode, {config.n_layer} layers x {config.n_embd} wide, batch {batch}, "
                        f"prompt {prompt_len}, {new_tokens} new tokens per run")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default=None, choices=list(SHAPES), help="default: char (training), gpt2 (decode)")
    p.add_argument("--decode", action="store_true", help="a generate run (prefill + 32 tokens) instead of a training step")
    p.add_argument("--batch", type=int, default=1, help="decode batch size")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--steps", type=int, default=5, help="timed runs, after one warm-up")
    add_threads_arg(p)
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch < 1:
        p.error(f"--steps and --batch must be at least 1, got {args.steps} and {args.batch}.")
    if args.decode:
        step, sync, title = decode_step(args.shape or "gpt2", args.batch, args.device)
    else:
        step, sync, title = training_step(args.shape or "char", args.device)

    def run(n):
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        sync()
        return (time.perf_counter() - t0) / n

    run(1)                                                 # warm-up: first-call costs, memory pools
    untimed = run(args.steps)
    timers = Timers(xp_for(args.device))
    install(timers, [L, M, O, bench_train, sys.modules["picogpt.generation"]])
    run(1)
    timers.clear()
    total = run(args.steps)
    per = {name: s / args.steps for name, s in timers.seconds.items()}
    per["other"] = total - sum(per.values())
    print(f"{title}, {args.device}; {args.steps} runs\n{machine()}")
    print(f"untimed {untimed * 1e3:,.1f} ms per run; with the timers {total * 1e3:,.1f} ms\n")
    print(f"{'op':<28}{'ms per run':>12}{'share':>8}{'calls':>8}")
    for name, s in sorted(per.items(), key=lambda kv: -kv[1]):
        calls = f"{timers.calls[name] / args.steps:.0f}" if name != "other" else "-"
        print(f"{name:<28}{s * 1e3:>12,.2f}{s / total:>8.0%}{calls:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
