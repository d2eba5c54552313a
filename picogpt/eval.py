"""Loss and perplexity of a model on a text: `python -m picogpt.eval --model M --text FILE`.

A text longer than the context is scored in sliding windows: each window is `context` tokens
long and starts `stride` tokens after the previous one, and only the tokens not scored by an
earlier window count, so every token after the first is scored exactly once, and (after the
first window) with at least context - stride tokens of history. stride = context scores
disjoint chunks (fast, less context per token); a smaller stride is slower and closer to the
model's best.
"""

import argparse
import math
import sys
import time

import numpy as np

from .cli import run_command
from .memory import check_fits, inference_bytes
from .data import split, tokenize_file
from .errors import PicoGPTError
from .weights import load_model


def windows(n_tokens, context, stride):
    """[(begin, end, first_scored)] covering tokens 1..n-1 once each."""
    if stride < 1 or stride > context:
        raise PicoGPTError(f"the stride must be in [1, context={context}], got {stride}.")
    out, scored_to, begin = [], 1, 0   # token 0 has no history, so it is never a target
    while scored_to < n_tokens:
        end = min(begin + context + 1, n_tokens)   # inputs [begin, end-1), targets [begin+1, end)
        out.append((begin, end, scored_to))
        scored_to = end
        begin += stride
    return out


def evaluate_ids(model, ids, context=None, stride=None, batch_size=8, progress=None):
    """Mean loss per token (nats) of `ids` (1-D int) under `model`; returns
    (loss, tokens scored, context, stride), the last two with their defaults filled in."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < 2:
        raise PicoGPTError("the text has fewer than 2 tokens: nothing to score.")
    n_ctx = model.config.n_ctx
    if context is not None and context > n_ctx:
        raise PicoGPTError(f"a context of {context} tokens is longer than the model's {n_ctx}: "
                           f"give at most {n_ctx} (or leave --context out to use {n_ctx}).")
    context = context or n_ctx
    stride = stride if stride is not None else max(1, context // 2)  # 0 is an error, not "default"
    wins = windows(len(ids), context, stride)
    batch_size = min(batch_size, len(wins))  # a batch never holds more windows than there are
    check_fits(inference_bytes(model.config, batch_size, context, np.dtype(model.dtype).itemsize), model.device,
               f"scoring {batch_size} windows of {context} tokens at once", "lower --batch-size or --context")
    total, count = 0.0, 0
    for i in range(0, len(wins), batch_size):
        group = wins[i:i + batch_size]
        T = max(end - begin - 1 for begin, end, _ in group)
        x = np.zeros((len(group), T), np.int64)
        y = np.full((len(group), T), -100, np.int64)   # -100: not scored
        for r, (begin, end, first) in enumerate(group):
            n = end - begin - 1
            x[r, :n] = ids[begin:end - 1]
            y[r, first - begin - 1:n] = ids[first:end]
        n = int((y != -100).sum())
        total += model.loss(x, y) * n      # checks the ids, scores only the targets' rows
        count += n
        if progress:
            progress(min(i + batch_size, len(wins)), len(wins))
    return total / count, count, context, stride


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m picogpt.eval", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Mean loss per token and perplexity of a model on a UTF-8 text (sliding windows).",
        epilog="examples:\n"
               "  python -m picogpt.eval --text examples/shakespeare.txt --tail 0.05     # the bundled model on its validation split\n"
               "  python -m picogpt.eval --model gpt2 --text essay.txt --stride 512")
    p.add_argument("--model", default=None, metavar="NAME|DIR", help="shakespeare (the bundled model, the default), gpt2, ..., or a checkpoint folder")
    p.add_argument("--text", required=True, help="a UTF-8 text file")
    p.add_argument("--tail", type=float, default=None, metavar="F",
                   help="score only the last fraction F of the tokens, 0 < F <= 1 (0.05 = picogpt.data's validation split)")
    p.add_argument("--context", type=int, default=None,
                   help="window length, at most the model's context (default: the model's context)")
    p.add_argument("--stride", type=int, default=None, help="window step (default: half the context)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--device", default=None, choices=["cpu", "gpu"], help="cpu or gpu (default: $PICOGPT_DEVICE or cpu)")
    return run_command(_eval_command, p.parse_args(argv))


def _eval_command(args):
    if args.context is not None and args.context < 2:
        raise PicoGPTError(f"--context must be >= 2, got {args.context}.")
    if args.batch_size < 1:
        raise PicoGPTError(f"--batch-size must be >= 1, got {args.batch_size}.")
    if args.tail is not None and not 0.0 < args.tail <= 1.0:  # also refuses NaN
        raise PicoGPTError(f"--tail must be a fraction above 0 and at most 1 (0.05 = the last 5% of the tokens), got {args.tail}.")
    model = load_model(args.model, device=args.device)
    ids = tokenize_file(args.text, "to score")
    what = f"{args.text}: all {len(ids):,} tokens"
    if args.tail is not None and args.tail < 1.0:
        ids = split(ids, args.tail)[1]
        what = f"{args.text}: the last {args.tail:g} = {len(ids):,} tokens"
    def progress(done, total):
        print(f"\r  window batch {done}/{total}", end="", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    loss, n, context, stride = evaluate_ids(model, ids, args.context, args.stride, args.batch_size, progress)
    print(file=sys.stderr)
    print(f"{what}\nmodel: {args.model or 'shakespeare (bundled)'}; context {context}, stride {stride}; {n:,} tokens scored "
          f"in {time.perf_counter() - t0:.1f} s\nloss {loss:.4f} nats/token, perplexity {math.exp(loss):.2f}")


if __name__ == "__main__":
    sys.exit(main())
