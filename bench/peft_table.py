"""The parameter-efficient family on one task, measured: what each method trains, costs and buys.

    python bench/peft_table.py --steps 60 --json bench/peft_table.json

Task: supervised fine-tuning of the bundled Shakespeare model (5 layers, 224 wide) on the
dialogue examples (examples/dialogue/{train,val}.jsonl: a speech -> the reply, six whole plays
held out for validation), prepared with `python -m picogpt.data --task sft`. The loss is the
mean cross-entropy of the reply tokens only (the template's loss mask).

Every method trains the same steps, batches and schedule in its own child process:

    full    every parameter                      lr 3e-4
    lora    rank 8, alpha 16, all projections    lr 2e-3
    prefix  16 virtual tokens                    lr 1e-2
    adapter Houlsby, size 16                     lr 2e-3
    bitfit  the biases                           lr 3e-3

(learning rates picked once, by the rule of thumb that the fewer numbers train the larger the
step they take; not tuned here; no weight decay, warmup a tenth of the steps, cosine to lr/10).
Columns:

    trainable   numbers the optimiser updates (and their share of the model's)
    peak MB     the child's peak resident memory (ru_maxrss from os.wait4): the process, NumPy,
                the data, the model, gradients, AdamW's moments and the activations of a step
    s/step      median seconds of a training step (forward + backward + AdamW), steps 2..N
    val loss    validation loss after the last step, on the first --eval-batches batches of
                the held-out plays (the same batches for every method), and before training

It prints a markdown table and writes the rows as JSON. The machine's load is printed with it:
on a shared machine seconds per step are comparable within one run, not across runs.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = {
    "full": dict(lr=3e-4),
    "lora": dict(lr=2e-3, lora_rank=8, lora_alpha=16),
    "prefix": dict(lr=1e-2, prefix_tokens=16),
    "adapter": dict(lr=2e-3, adapter_size=16),
    "bitfit": dict(lr=3e-3, bitfit=True),
}


def prepare(data_dir):
    """Tokenise the dialogue examples once (picogpt.data --task sft)."""
    if not (data_dir / "meta.json").is_file():
        subprocess.run([sys.executable, "-m", "picogpt.data", str(ROOT / "examples/dialogue/train.jsonl"), "--task", "sft",
                        "--val", str(ROOT / "examples/dialogue/val.jsonl"), "--out", str(data_dir)],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return data_dir


def child(args):
    """Train one method; print one JSON line of what it measured."""
    from picogpt.train import TrainConfig, Trainer

    cfg = TrainConfig(data=args.data, out=args.out, init="shakespeare", steps=args.steps, batch_size=args.batch_size,
                      block_size=args.block_size, warmup_steps=max(1, args.steps // 10), eval_interval=args.steps,
                      eval_batches=args.eval_batches, log_interval=args.steps, seed=0, weight_decay=0.0,
                      **METHODS[args.one])
    t = Trainer(cfg, log=lambda *_: None)
    before = t.evaluate("val")
    seconds = []
    for _ in range(args.steps):
        r = t.step()
        seconds.append(r["seconds"])
    n = sum(int(t.model.params[k].size) for k in t.trainable)
    total = t.model.num_params()
    print(json.dumps({"method": args.one, "trainable": n, "share": n / total, "params": total,
                      "s_per_step": statistics.median(seconds[1:] or seconds), "val_before": before,
                      "val_loss": t.evaluate("val"), "lr": cfg.lr, "train_loss_last": r["loss"]}))


def run_one(method, args, data_dir, out_root):
    """The child for `method`, its JSON line and its peak memory (ru_maxrss, kB on Linux)."""
    cmd = [sys.executable, __file__, "--one", method, "--data", str(data_dir), "--out", str(out_root / method),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--block-size", str(args.block_size),
           "--eval-batches", str(args.eval_batches)]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)   # this child's own rusage (Popen.wait would reap it first)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            sys.exit(f"{method} failed:\n{err.read()[-3000:]}")
    row = json.loads(out.strip().splitlines()[-1])
    row["peak_mb"] = usage.ru_maxrss / 1024   # kB on Linux
    row["wall_s"] = time.perf_counter() - start
    return row


def table(rows, steps, load):
    lines = [f"| method | trainable | share | peak MB | s/step | val loss before | val loss after {steps} steps |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['trainable']:,} | {100 * r['share']:.2f}% | {r['peak_mb']:.0f} | "
                     f"{r['s_per_step']:.2f} | {r['val_before']:.3f} | {r['val_loss']:.3f} |")
    return "\n".join(lines) + f"\n\nload average while measured: {load}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from " + ", ".join(METHODS))
    p.add_argument("--json", default=None, help="write the rows here as JSON")
    p.add_argument("--one", choices=list(METHODS), help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = prepare(tmp / "dialogue")
        load_start = os.getloadavg()
        rows = []
        for m in args.methods.split(","):
            rows.append(run_one(m, args, data_dir, tmp))
            print(f"{m}: done in {rows[-1]['wall_s']:.0f} s", file=sys.stderr)
    load = f"{', '.join(f'{x:.2f}' for x in load_start)} at the start, {', '.join(f'{x:.2f}' for x in os.getloadavg())} at the end ({os.cpu_count()} cores)"
    text = table(rows, args.steps, load)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "batch_size": args.batch_size,
                                               "block_size": args.block_size, "eval_batches": args.eval_batches,
                                               "load": load, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
