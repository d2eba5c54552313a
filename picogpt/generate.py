"""The `python -m picogpt.generate` command: continue a prompt from the command line.

Samples are made `--batch-size` at a time (default 16), so `--num-samples 100000` runs in the
memory of one batch. The first sample of each batch streams token by token as it is made; the
others of the batch follow as soon as the batch is done.

The generation loop itself is picogpt.generation.generate (also `model.generate`); it is
re-exported here, with fit_context, so `from picogpt.generate import generate` keeps working.
"""

import argparse
import sys
import time

import numpy as np

from .cli import run_command
from .errors import PicoGPTError
from .generation import OVERFLOW_RULES, fit_context, generate
from .heads import check_language_model
from .memory import check_fits, generation_bytes
from .sampling import check_sampling_args
from .tokenizer import get_tokenizer
from .weights import load_model

__all__ = ["OVERFLOW_RULES", "build_parser", "fit_context", "generate", "main", "run"]

DEFAULT_BATCH_SIZE = 16   # samples at once: fast on a CPU or GPU, a few MB of KV cache for GPT-2 124M


# --- the command line ---------------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m picogpt.generate",
        description="Continue a prompt with GPT-2. The default model is the small Shakespeare model "
                    "bundled with picogpt; --model gpt2 uses OpenAI's GPT-2 (downloaded on first use).",
        epilog='examples:\n'
               '  python -m picogpt.generate "ROMEO:"\n'
               '  python -m picogpt.generate "The meaning of life is" --model gpt2 --top-p 0.9 --seed 1\n'
               '  python -m picogpt.generate "<|endoftext|>" --num-samples 3 --max-new-tokens 60\n'
               '  python -m picogpt.generate "ROMEO:" --num-samples 1000 --batch-size 32 > samples.txt',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", help='the text to continue ("<|endoftext|>" starts from nothing)')
    p.add_argument("--model", default=None, metavar="NAME|DIR",
                   help="shakespeare (the bundled model, the default), gpt2, gpt2-medium, gpt2-large, gpt2-xl "
                        "(or 124M, 355M, 774M, 1558M), or a checkpoint folder")
    p.add_argument("--max-new-tokens", type=int, default=100, metavar="N", help="tokens to generate (default 100)")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T",
                   help="sampling temperature; 0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=200, metavar="K",
                   help="sample among the K most likely tokens (default 200; 0 = off)")
    p.add_argument("--top-p", type=float, default=None, metavar="P",
                   help="nucleus sampling: the smallest set of tokens with probability >= P (default off)")
    p.add_argument("--seed", type=int, default=None, help="random seed >= 0, for reproducible samples")
    p.add_argument("--num-samples", type=int, default=1, metavar="N",
                   help="how many continuations (default 1); they are made --batch-size at a time and each batch "
                        "is printed when it is done")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="B",
                   help=f"samples made at once (default {DEFAULT_BATCH_SIZE}): memory grows with B, not with "
                        "--num-samples; 1 streams every sample token by token")
    p.add_argument("--device", default=None, choices=["cpu", "gpu"],
                   help="where to run (default: $PICOGPT_DEVICE or cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                   help="float16 is for the GPU (default float32)")
    p.add_argument("--overflow", default="error", choices=OVERFLOW_RULES,
                   help="when prompt + new tokens exceed the context: error (default) or truncate the prompt's start")
    return p


def main(argv=None):
    return run_command(run, build_parser().parse_args(argv))


def run(args):
    if not args.prompt:
        raise PicoGPTError("the prompt is empty: give some text to continue, or \"<|endoftext|>\" to start from nothing.")
    if args.num_samples < 1:
        raise PicoGPTError(f"--num-samples must be >= 1, got {args.num_samples}.")
    if args.batch_size < 1:
        raise PicoGPTError(f"--batch-size must be >= 1, got {args.batch_size}.")
    if args.seed is not None and args.seed < 0:
        raise PicoGPTError(f"--seed must be a whole number >= 0, got {args.seed}.")
    if args.max_new_tokens < 0:
        raise PicoGPTError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}.")
    top_k = args.top_k or None
    if args.top_k is not None and args.top_k < 0:
        raise PicoGPTError(f"--top-k must be >= 1 (or 0 for off), got {args.top_k}.")
    check_sampling_args(args.temperature, top_k, args.top_p)
    tok = get_tokenizer()
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    check_language_model(model, args.model)   # a classifier folder writes no text
    all_ids = tok.encode(args.prompt)
    prompt_ids = fit_context([all_ids], args.max_new_tokens, model.config.n_ctx, args.overflow)[0]
    model.check_ids(prompt_ids)  # before anything is printed
    prompt = args.prompt if len(prompt_ids) == len(all_ids) else tok.decode(prompt_ids)  # truncated?
    B = min(args.batch_size, args.num_samples)
    itemsize = np.dtype(model.dtype).itemsize
    check_fits(generation_bytes(model.config, B, len(prompt_ids), len(prompt_ids) + args.max_new_tokens, itemsize),
               model.device, f"{B} samples at once", "lower --batch-size")

    t0, n_new = time.perf_counter(), 0
    for first in range(0, args.num_samples, B):
        n = min(B, args.num_samples - first)
        # Batch 0 uses the seed itself, so one batch equals generate(..., seed=seed); later
        # batches get their own stream, (seed, batch number), reproducible too.
        seed = args.seed if first == 0 or args.seed is None else (args.seed, first // B)
        n_new += _sample_batch(model, tok, prompt, prompt_ids, n, first, args, seed)
    seconds = time.perf_counter() - t0
    print(f"[{n_new} tokens in {seconds:.2f} s, {n_new / max(seconds, 1e-9):.1f} tokens/s on {model.device}]", file=sys.stderr)


def _sample_batch(model, tok, prompt, prompt_ids, n, first, args, seed):
    """Make n samples at once and print them (numbered from first + 1); returns the tokens made.

    The batch's first sample streams token by token as it is made; the rest follow when it is done."""
    out = sys.stdout
    header = (lambda i: f"---------- sample {i}\n") if args.num_samples > 1 else (lambda i: "")
    decoder = tok.stream_decoder()
    out.write(header(first + 1) + prompt)
    out.flush()

    def on_token(step, tokens):
        if tokens[0] != tok.eot_token:
            out.write(decoder([tokens[0]]))
            out.flush()

    result = generate(model, [prompt_ids] * n, args.max_new_tokens, args.temperature, args.top_k or None,
                      args.top_p, seed, overflow=args.overflow, on_token=on_token)
    out.write(decoder([]) + "\n")
    for i, row in enumerate(result[1:], start=first + 2):
        text = tok.decode([t for t in row[len(prompt_ids):] if t != tok.eot_token])
        out.write(f"{header(i)}{prompt}{text}\n")
    out.flush()
    return result[:, len(prompt_ids):].size   # equal-length prompts: a (n, T + new) array


if __name__ == "__main__":
    sys.exit(main())
