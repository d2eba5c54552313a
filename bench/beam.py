"""The cost of beam search against greedy decoding, per new token, on the bundled model.

Three ways to make the same number of new tokens from one prompt, timed interleaved in one run
(bench/common.py), BLAS threads pinned (--threads, default 1):

    greedy       1 row
    greedy x4    4 rows of greedy decoding at once: what 4 beams cost in model work alone
    beams 4      num_beams=4: the same 4 rows, plus choosing the best 2K of 4 x 50,257
                 candidates (a sort), the host bookkeeping, and reordering the KV cache rows in
                 place at every step (KVCache.reorder)

No end-of-text stops any of them, so each makes exactly --new tokens. The table gives the
milliseconds per new token (median and range over the repeats) and the ratio to greedy.

    python bench/beam.py
    python bench/beam.py --new 64 --repeats 7 --json results.jsonl
"""

import argparse

from common import add_threads_arg, interleaved, report, summary
import numpy as np

import picogpt


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="default: the bundled Shakespeare model")
    p.add_argument("--prompt", default="ROMEO:")
    p.add_argument("--new", type=int, default=48, help="new tokens per run (default 48)")
    p.add_argument("--beams", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    add_threads_arg(p)
    args = p.parse_args()
    model, tok = picogpt.load_model(args.model, device="cpu"), picogpt.get_tokenizer()
    ids = tok.encode(args.prompt)
    K, n = args.beams, args.new
    fns = {
        "greedy": (lambda: model.generate(ids, n, stop_at_eot=False), lambda: None),
        f"greedy x{K}": (lambda: model.generate([ids] * K, n, stop_at_eot=False), lambda: None),
        f"beams {K}": (lambda: model.generate(ids, n, num_beams=K, stop_at_eot=False), lambda: None),
    }
    times = interleaved(fns, repeats=args.repeats)
    base = np.median(times["greedy"]["wall"])
    rows = [{"decoding": name, "per new token": summary([t / n for t in times[name]["wall"]]),
             "cpu per token": summary([t / n for t in times[name]["cpu"]]),
             "x greedy": f"{np.median(times[name]['wall']) / base:.2f}"} for name in fns]
    report(f"beam search vs greedy: {n} new tokens after {len(ids)} prompt tokens, {model!r}", rows, args.json)


if __name__ == "__main__":
    main()
