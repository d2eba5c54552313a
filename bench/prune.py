"""Pruning the bundled model: held-out loss against sparsity, and the speed of fewer heads.

1. Magnitude pruning (picogpt.prune.magnitude_masks) of the blocks' projection weights at
   each --sparsity, per layer and global: the held-out loss, no fine-tuning afterwards.
2. Head pruning (Michel et al., 2019): heads ranked once by |dL/dgate| summed over --batches
   training batches, then the least important --heads fractions removed: held-out loss.
3. Tokens per second of the model with the largest --heads fraction removed against the
   unpruned one, timed interleaved (bench/common.py), for the forward of a (B, T) batch:
   the transformer body alone (head=False) and with the LM head, which heads do not touch
   and which dominates this small model (11.3M of its 14.3M parameters are wte).

The held-out loss is the mean cross-entropy over --eval-batches fixed batches of the last 5%
of examples/shakespeare.txt (the bundled model's validation split).

    python bench/prune.py
    python bench/prune.py --sparsity 0,0.1,0.3,0.5,0.7 --heads 0,0.143,0.286,0.429 --json results.jsonl
"""

import argparse
from pathlib import Path

from common import add_threads_arg, interleaved, report, summary
import numpy as np

import picogpt
from picogpt import data as D
from picogpt import prune as P

ROOT = Path(__file__).resolve().parent.parent


def held_out(model, batches):
    return float(np.mean([model.loss(x, y) for x, y in batches]))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT / "examples" / "shakespeare.txt"))
    p.add_argument("--sparsity", default="0,0.1,0.3,0.5,0.7")
    p.add_argument("--heads", default="0,0.143,0.286,0.429")
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=8, help="training batches ranking the heads")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    add_threads_arg(p)
    args = p.parse_args()
    base = picogpt.load_model()
    train_ids, val_ids = D.load_dataset(args.data)
    rng = np.random.default_rng([0, 2])
    val = [D.get_batch(val_ids, args.batch_size, args.block_size, rng) for _ in range(args.eval_batches)]

    rows = []
    names = P.prunable(base.config)
    for scope in ("layer", "global"):
        for s in map(float, args.sparsity.split(",")):
            model = picogpt.GPT2(base.config, dict(base.params))
            masks = P.magnitude_masks(model.params, names, s, scope)
            model.params.update({k: model.params[k] * m for k, m in masks.items()})
            rows.append({"kind": f"magnitude ({scope})", "amount": s, "zero": round(P.sparsity_of(model.params, names), 3),
                         "held-out loss": f"{held_out(model, val):.3f}"})
    report("Magnitude pruning of the bundled model (no fine-tuning)", rows, args.json)

    imp = P.head_importance(base, P.importance_batches(args.data, args.batches, args.batch_size, 128))
    total = sum(len(i) for i in imp)
    rows, pruned = [], None
    for f in map(float, args.heads.split(",")):
        pruned = P.remove_heads(base, P.heads_to_prune(imp, f))
        left = sum(pruned.config.heads(i) for i in range(pruned.config.n_layer))
        rows.append({"kind": "heads", "amount": f, "heads": f"{left}/{total}", "params": pruned.num_params(),
                     "held-out loss": f"{held_out(pruned, val):.3f}"})
    report("Head pruning of the bundled model (importance = |dL/dgate|, no fine-tuning)", rows, args.json)

    x = val[0][0]
    fns = {}
    for label, m in (("unpruned", base), (f"{rows[-1]['heads']} heads", pruned)):
        fns[f"{label} body"] = (lambda m=m: m.forward(x, head=False), lambda: None)
        fns[f"{label} +head"] = (lambda m=m: m.forward(x), lambda: None)
    times = interleaved(fns, args.repeats)
    rows = [{"forward": k, "time": summary(t["cpu"]), "tokens/s (cpu time)": x.size / float(np.median(t["cpu"])),
             "tokens/s (wall)": x.size / float(np.median(t["wall"]))} for k, t in times.items()]
    report(f"Forward of {x.shape[0]} x {x.shape[1]} tokens, unpruned vs head-pruned", rows, args.json)


if __name__ == "__main__":
    main()
