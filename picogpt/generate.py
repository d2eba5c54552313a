"""The `python -m picogpt.generate` command: continue a prompt from the command line.

The generation loop itself is picogpt.generation.generate (also `model.generate`); it is
re-exported here, with fit_context, so `from picogpt.generate import generate` keeps working.
"""

import argparse
import sys
import time

from .cli import run_command
from .errors import PicoGPTError
from .generation import OVERFLOW_RULES, fit_context, generate
from .sampling import check_sampling_args
from .tokenizer import get_tokenizer
from .weights import load_model

__all__ = ["OVERFLOW_RULES", "build_parser", "fit_context", "generate", "main", "run"]


# --- the command line ---------------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m picogpt.generate",
        description="Continue a prompt with GPT-2. The default model is the small Shakespeare model "
                    "bundled with picogpt; --model gpt2 uses OpenAI's GPT-2 (downloaded on first use).",
        epilog='examples:\n'
               '  python -m picogpt.generate "ROMEO:"\n'
               '  python -m picogpt.generate "The meaning of life is" --model gpt2 --top-p 0.9 --seed 1\n'
               '  python -m picogpt.generate "<|endoftext|>" --num-samples 3 --max-new-tokens 60',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", help='the text to continue ("<|endoftext|>" starts from nothing)')
    p.add_argument("--model", default=None, metavar="NAME|DIR",
                   help="gpt2, gpt2-medium, gpt2-large, gpt2-xl (or 124M, 355M, 774M, 1558M), or a "
                        "checkpoint folder (default: the bundled Shakespeare model)")
    p.add_argument("--max-new-tokens", type=int, default=100, metavar="N", help="tokens to generate (default 100)")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T",
                   help="sampling temperature; 0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=200, metavar="K",
                   help="sample among the K most likely tokens (default 200; 0 = off)")
    p.add_argument("--top-p", type=float, default=None, metavar="P",
                   help="nucleus sampling: the smallest set of tokens with probability >= P (default off)")
    p.add_argument("--seed", type=int, default=None, help="random seed, for reproducible samples")
    p.add_argument("--num-samples", type=int, default=1, metavar="N", help="how many continuations (default 1)")
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
    if args.max_new_tokens < 0:
        raise PicoGPTError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}.")
    top_k = args.top_k or None
    if args.top_k is not None and args.top_k < 0:
        raise PicoGPTError(f"--top-k must be >= 1 (or 0 for off), got {args.top_k}.")
    check_sampling_args(args.temperature, top_k, args.top_p)
    tok = get_tokenizer()
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    all_ids = tok.encode(args.prompt)
    prompt_ids = fit_context([all_ids], args.max_new_tokens, model.config.n_ctx, args.overflow)[0]
    model.check_ids(prompt_ids)  # before anything is printed
    prompt = args.prompt if len(prompt_ids) == len(all_ids) else tok.decode(prompt_ids)  # truncated?

    out = sys.stdout
    stream = args.num_samples == 1
    decoders = tok.stream_decoder()
    if stream:
        out.write(prompt)
        out.flush()

    def on_token(step, tokens):
        if tokens[0] != tok.eot_token:
            out.write(decoders([tokens[0]]))
            out.flush()

    t0 = time.perf_counter()
    result = generate(model, [prompt_ids] * args.num_samples, args.max_new_tokens, args.temperature, top_k,
                      args.top_p, args.seed, overflow=args.overflow, on_token=on_token if stream else None)
    seconds = time.perf_counter() - t0
    n_new = result[:, len(prompt_ids):].size   # equal-length prompts: a (num_samples, T + new) array
    if stream:
        out.write(decoders([]) + "\n")
    else:
        for i, row in enumerate(result):
            text = tok.decode([t for t in row[len(prompt_ids):] if t != tok.eot_token])
            out.write(f"---------- sample {i + 1}\n{prompt}{text}\n")
    out.flush()
    print(f"[{n_new} tokens in {seconds:.2f} s, {n_new / max(seconds, 1e-9):.1f} tokens/s on {model.device}]", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
