"""The `python -m picogpt.generate` command: continue a prompt from the command line.

Samples are made `--batch-size` at a time (default 16), so `--num-samples 100000` runs in the
memory of one batch. The first sample of each batch streams token by token as it is made; the
others of the batch follow as soon as the batch is done.

The generation loop itself is picogpt.generation.generate (also `model.generate`); it is
re-exported here, with fit_context, so `from picogpt.generate import generate` keeps working.

The decoding options are transformers' (`--repetition-penalty`, `--no-repeat-ngram-size`,
`--min-new-tokens`, `--num-beams`, `--num-return-sequences`, `--length-penalty`,
`--early-stopping`) plus `--stop TEXT` (repeatable): a continuation ends before its first stop
string, and streamed text that could be the start of one is held back until it is not.
`add_decoding_arguments` / `decoding_options` give the same flags to `python -m picogpt.eval`.
"""

import argparse
import re
import sys
import time

import numpy as np

from .cli import run_command
from .errors import PicoGPTError
from .beam import check_beam_args
from .generation import OVERFLOW_RULES, check_stop, cut_at_stop, fit_context, generate
from .heads import check_language_model
from .memory import check_fits, generation_bytes
from .sampling import check_rule_args, check_sampling_args
from .tokenizers import get_tokenizer
from .weights import load_model

__all__ = ["OVERFLOW_RULES", "add_decoding_arguments", "build_parser", "decoding_options", "fit_context", "generate",
           "main", "run"]

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
               '  python -m picogpt.generate "ROMEO:" --num-samples 1000 --batch-size 32 > samples.txt\n'
               '  python -m picogpt.generate "ROMEO:" --num-beams 4 --num-return-sequences 2 --no-repeat-ngram-size 3\n'
               '  python -m picogpt.generate "ROMEO:" --repetition-penalty 1.3 --stop "\\n\\n" --seed 1\n'
               '  python -m picogpt.generate "ROMEO:" --model M --max-new-tokens 3000 --overflow slide',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", help='the text to continue ("<|endoftext|>" starts from nothing)')
    p.add_argument("--model", default=None, metavar="NAME|DIR",
                   help="shakespeare (the bundled model, the default), gpt2, gpt2-medium, gpt2-large, gpt2-xl "
                        "(or 124M, 355M, 774M, 1558M), or a checkpoint folder")
    p.add_argument("--max-new-tokens", type=int, default=100, metavar="N", help="tokens to generate (default 100)")
    p.add_argument("--temperature", type=float, default=None, metavar="T",
                   help="sampling temperature; 0 = greedy (default 0.8; 0 with --num-beams)")
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
                   help="when prompt + new tokens exceed the context: error (default), truncate the prompt's start, or "
                        "slide: keep the last n_ctx - 1 tokens and go on, as nanoGPT (a full forward pass per token "
                        "once the context is full)")
    add_decoding_arguments(p)
    return p


def add_decoding_arguments(p):
    """transformers' decoding options as flags (same names and defaults), and --stop."""
    g = p.add_argument_group("decoding (transformers' generate options, same defaults)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                   help="CTRL's penalty on every token already in the text: > 1 discourages repeats (default 1.0 = off)")
    g.add_argument("--no-repeat-ngram-size", type=int, default=0, metavar="N",
                   help="never produce an N-gram of tokens twice (default 0 = off)")
    g.add_argument("--min-new-tokens", type=int, default=0, metavar="N",
                   help="no <|endoftext|> before N new tokens (default 0)")
    g.add_argument("--num-beams", type=int, default=1, metavar="K",
                   help="beam search with K beams (default 1 = none); deterministic, temperature 0")
    g.add_argument("--num-return-sequences", type=int, default=1, metavar="R",
                   help="with --num-beams: print the R best beams, R <= K (default 1)")
    g.add_argument("--length-penalty", type=float, default=1.0, metavar="L",
                   help="a finished beam scores sum(log p) / length^L: > 0 favours longer ones (default 1.0)")
    g.add_argument("--early-stopping", default="false", choices=["true", "false", "never"],
                   help="beam search stops at K finished beams (true), when the best running beam can no longer win "
                        "at its current length (false, the default), or at its best possible length (never)")
    g.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="end a continuation before TEXT (repeatable: the first one met ends it); "
                        "\\n and \\t in TEXT stand for a newline and a tab")


def unescape(text):
    r"""A shell cannot easily type a newline: \n, \t and \\ in a --stop text mean newline, tab, backslash."""
    return re.sub(r"\\(n|t|\\)", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def decoding_options(args):
    """The parsed decoding flags -> generate's keywords, each checked (one sentence if wrong)."""
    opts = dict(repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
                min_new_tokens=args.min_new_tokens, num_beams=args.num_beams,
                num_return_sequences=args.num_return_sequences, length_penalty=args.length_penalty,
                early_stopping={"true": True, "false": False, "never": "never"}[args.early_stopping],
                stop=check_stop(None if args.stop is None else [unescape(s) for s in args.stop]))
    check_rule_args(opts["repetition_penalty"], opts["no_repeat_ngram_size"], opts["min_new_tokens"])
    return opts


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
    if args.temperature is None:   # beam search is deterministic; sampling's default is 0.8
        args.temperature = 0.8 if args.num_beams == 1 else 0.0
    check_sampling_args(args.temperature, top_k, args.top_p)
    opts = decoding_options(args)
    if args.num_beams == 1 and args.num_return_sequences > 1 and args.temperature > 0:
        raise PicoGPTError("--num-return-sequences is for beam search (--num-beams); to sample several continuations "
                           "use --num-samples.")
    check_beam_args(args.num_beams, args.num_return_sequences, args.temperature, args.length_penalty,
                    opts["early_stopping"])
    if args.num_beams > 1 and args.num_samples > 1:
        raise PicoGPTError("beam search is deterministic, so --num-samples would repeat one result: use "
                           "--num-return-sequences to see more beams.")
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    tok = get_tokenizer(model)   # the model folder's tokenizer.json, or GPT-2's
    check_language_model(model, args.model)   # a classifier folder writes no text
    all_ids = tok.encode(args.prompt)
    prompt_ids = fit_context([all_ids], args.max_new_tokens, model.context, args.overflow)[0]
    model.check_ids(prompt_ids)  # before anything is printed
    prompt = args.prompt if len(prompt_ids) == len(all_ids) else tok.decode(prompt_ids)  # truncated?
    B = min(args.batch_size, args.num_samples)
    rows = B * args.num_beams
    itemsize = np.dtype(model.dtype).itemsize
    window = min(len(prompt_ids) + args.max_new_tokens, model.config.n_ctx)
    check_fits(generation_bytes(model.config, rows, min(len(prompt_ids), window), window, itemsize),
               model.device, f"{rows} rows at once", "lower --batch-size" if args.num_beams == 1 else "lower --num-beams")
    if args.num_beams > 1:
        return _beams(model, tok, prompt, prompt_ids, args, opts)

    t0, n_new = time.perf_counter(), 0
    for first in range(0, args.num_samples, B):
        n = min(B, args.num_samples - first)
        # Batch 0 uses the seed itself, so one batch equals generate(..., seed=seed); later
        # batches get their own stream, (seed, batch number), reproducible too.
        seed = args.seed if first == 0 or args.seed is None else (args.seed, first // B)
        n_new += _sample_batch(model, tok, prompt, prompt_ids, n, first, args, seed, opts)
    seconds = time.perf_counter() - t0
    print(f"[{n_new} tokens in {seconds:.2f} s, {n_new / max(seconds, 1e-9):.1f} tokens/s on {model.device}]", file=sys.stderr)


def _sample_batch(model, tok, prompt, prompt_ids, n, first, args, seed, opts):
    """Make n samples at once and print them (numbered from first + 1); returns the tokens made.

    The batch's first sample streams token by token as it is made; the rest follow when it is done."""
    out = sys.stdout
    header = (lambda i: f"---------- sample {i}\n") if args.num_samples > 1 else (lambda i: "")
    decoder = tok.stream_decoder()
    out.write(header(first + 1) + prompt)
    out.flush()
    stream = StopStream(out, opts["stop"])

    def on_token(step, tokens):
        if tokens[0] != tok.eot_token:
            stream.write(decoder([tokens[0]]))

    result = generate(model, [prompt_ids] * n, args.max_new_tokens, args.temperature, args.top_k or None,
                      args.top_p, seed, overflow=args.overflow, on_token=on_token, **opts)
    stream.write(decoder([]), final=True)
    out.write("\n")
    for i, row in enumerate(result[1:], start=first + 2):
        out.write(f"{header(i)}{prompt}{_text(tok, row[len(prompt_ids):], opts['stop'])}\n")
    out.flush()
    return result[:, len(prompt_ids):].size   # equal-length prompts: a (n, T + new) array


def _beams(model, tok, prompt, prompt_ids, args, opts):
    """Beam search: print the --num-return-sequences best beams, best first."""
    t0 = time.perf_counter()
    result = generate(model, [prompt_ids], args.max_new_tokens, 0.0, overflow=args.overflow, **opts)
    seconds = time.perf_counter() - t0
    many = len(result) > 1
    for i, row in enumerate(result, start=1):
        sys.stdout.write(f"---------- sequence {i}\n" * many + prompt + _text(tok, row[len(prompt_ids):], opts["stop"]) + "\n")
    sys.stdout.flush()
    print(f"[{args.num_beams} beams, {len(result[0]) - len(prompt_ids)} new tokens in {seconds:.2f} s on {model.device}]",
          file=sys.stderr)


def _text(tok, new_ids, stop):
    """The text of a row's new tokens, without end-of-text, ending before its first stop string."""
    return cut_at_stop(tok.decode([t for t in new_ids if t != tok.eot_token]), stop)


class StopStream:
    """Writes a continuation as it comes, never past a stop string: text that could be the
    beginning of one waits until the next piece shows it is not (or the end)."""

    def __init__(self, out, stop):
        self.out, self.stop, self.text, self.shown = out, stop, "", 0

    def write(self, piece, final=False):
        self.text += piece
        end = len(cut_at_stop(self.text, self.stop))
        if end == len(self.text) and not final:
            end -= max([k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])], default=0)
        if end > self.shown:
            self.out.write(self.text[self.shown:end])
            self.out.flush()
            self.shown = end


if __name__ == "__main__":
    sys.exit(main())
