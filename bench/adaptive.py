"""The output layer alone: GPT-2's tied full softmax against an adaptive softmax, per token.

Both take the same final hidden states (N, C) of the bundled model's width (C = 224) and the
next tokens of real Shakespeare text (GPT-2 ids), and compute the mean loss and its backward
(dx and the output layer's weight gradients): layers.lm_head_cross_entropy (the fused,
chunked full softmax over 50,257 tokens, as training runs it) against
adaptive.adaptive_forward + adaptive_backward with --cutoffs. Timed interleaved
(bench/common.py), BLAS threads pinned (--threads, default 1). The rest of the model is the
same for both, so this is where the difference lives. A second table times the whole model's
loss and gradients (forward + backward, no optimizer step) at the bundled model's shape (5 layers,
7 heads, 224 wide) on --batch x --block tokens, with either output layer.

    python bench/adaptive.py
    python bench/adaptive.py --tokens 2048 --cutoffs 2000,10000 --json results.jsonl
"""

import argparse
from pathlib import Path

from common import add_threads_arg, interleaved, report, summary
import numpy as np

import picogpt
from picogpt import adaptive as A
from picogpt import data as D
from picogpt import layers as L

ROOT = Path(__file__).resolve().parent.parent


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT / "examples" / "shakespeare.txt"))
    p.add_argument("--tokens", type=int, default=1024, help="rows N of the batch (default 1024)")
    p.add_argument("--width", type=int, default=224, help="C (default 224, the bundled model's)")
    p.add_argument("--cutoffs", default="2000,10000")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", default=None)
    add_threads_arg(p)
    args = p.parse_args()
    train_ids, _ = D.load_dataset(args.data)
    V, C, N = 50257, args.width, args.tokens
    targets = np.asarray(train_ids[1:N + 1], dtype=np.int64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C)).astype(np.float32)
    wte = (rng.standard_normal((V, C)) * 0.02).astype(np.float32)
    cutoffs = A.parse_cutoffs(args.cutoffs, V)
    params = A.init_params(C, cutoffs, V, np, np.float32)
    head, tails, _ = A._parts(params)

    def full():
        L.lm_head_cross_entropy(x, wte, targets)

    def adaptive():
        A.adaptive_backward(1.0, A.adaptive_forward(x, targets, head, tails, cutoffs)[1])

    times = interleaved({"full softmax (tied)": (full, lambda: None), f"adaptive {args.cutoffs}": (adaptive, lambda: None)},
                        args.repeats)
    base = float(np.median(times["full softmax (tied)"]["cpu"]))
    rows = [{"output layer": k, "cpu time": summary(t["cpu"]), "tokens/s": N / float(np.median(t["cpu"])),
             "speed-up": base / float(np.median(t["cpu"]))} for k, t in times.items()]
    share = float((targets < cutoffs[0]).mean())
    report(f"Loss + backward of the output layer, {N} tokens x {C} wide ({share:.0%} of the targets in the head)",
           rows, args.json)

    model = picogpt.init_model(picogpt.GPT2Config(n_layer=5, n_head=7, n_embd=C, n_ctx=args.block), seed=0)
    full_params = dict(model.params)
    ada_params = {**model.params, **params}
    ids = np.asarray(train_ids[:args.batch * (args.block + 1)], dtype=np.int64).reshape(args.batch, args.block + 1)
    x_, y_ = ids[:, :-1], ids[:, 1:]
    times = interleaved({"full softmax (tied)": (lambda: picogpt.model.loss_and_grads(full_params, model.config, x_, y_),
                                                 lambda: None),
                         f"adaptive {args.cutoffs}": (lambda: A.loss_and_grads(ada_params, model.config, x_, y_),
                                                      lambda: None)}, max(3, args.repeats // 2))
    base = float(np.median(times["full softmax (tied)"]["cpu"]))
    rows = [{"model loss + grads": k, "cpu time": summary(t["cpu"]), "tokens/s": x_.size / float(np.median(t["cpu"])),
             "speed-up": base / float(np.median(t["cpu"]))} for k, t in times.items()]
    report(f"The whole model's loss and gradients, 5 layers x 224 wide, {args.batch} x {args.block} tokens", rows, args.json)


if __name__ == "__main__":
    main()
