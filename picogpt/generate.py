"""Text generation: the KV-cache loop, and the `python -m picogpt.generate` command.

The prompt is run through the model once (prefill), filling each layer's key/value cache;
then every step feeds only the newest token and reads the earlier ones from the cache, so a
step costs one position, not the whole sequence.

Prompts of different lengths run together: they are left-padded to one length, and each row's
positions and attention mask skip its padding (see model.positions_and_mask).

The context rule: a prompt plus max_new_tokens may not exceed the model's context (1024 for
GPT-2). By default that is an error; with overflow="truncate" the oldest prompt tokens are
dropped until it fits.
"""

import argparse
import sys
import time

import numpy as np

from .backend import PicoGPTError, asnumpy
from .cli import run_command
from .model import forward
from .sampling import check_sampling_args, sample

OVERFLOW_RULES = ("error", "truncate")


def _as_prompts(ids):
    """ids (T,) | (B, T) | list of B lists -> (list of int lists, how to shape the output)."""
    if isinstance(ids, (list, tuple)) and ids and isinstance(ids[0], (list, tuple, np.ndarray)):
        rows = [list(map(int, r)) for r in ids]
        kind = "array" if len({len(r) for r in rows}) == 1 else "ragged"
        return rows, kind
    a = asnumpy(ids)
    if a.ndim == 1:
        return [a.tolist()], "flat"
    if a.ndim == 2:
        return a.tolist(), "array"
    raise PicoGPTError(f"prompt ids must be (T,), (B, T) or a list of lists, got shape {a.shape}.")


def fit_context(prompts, max_new_tokens, n_ctx, overflow="error"):
    """Apply the context rule to each prompt (a list of ids); returns the prompts to run."""
    if overflow not in OVERFLOW_RULES:
        raise PicoGPTError(f"unknown overflow rule {overflow!r}: use 'error' or 'truncate'.")
    if max_new_tokens >= n_ctx:
        raise PicoGPTError(f"{max_new_tokens} new tokens leave no room for a prompt in the context of {n_ctx} tokens.")
    room = n_ctx - max_new_tokens
    longest = max(len(p) for p in prompts)
    if longest <= room:
        return prompts
    if overflow == "error":
        raise PicoGPTError(
            f"the prompt ({longest} tokens) plus {max_new_tokens} new tokens exceeds the model's context of "
            f"{n_ctx} tokens: shorten the prompt, ask for fewer new tokens, or allow truncation "
            f"(overflow='truncate', --overflow truncate) to keep only the last {room} prompt tokens.")
    return [p[-room:] for p in prompts]


def generate(model, ids, max_new_tokens=32, temperature=0.0, top_k=None, top_p=None, seed=None,
             stop_at_eot=True, eot_token=50256, overflow="error", on_token=None):
    """Continue each prompt by up to `max_new_tokens` tokens.

    ids: int (T,), (B, T), or a list of B lists of different lengths.
    temperature 0 is greedy; top_k / top_p filter before sampling; `seed` makes sampling
    reproducible. A row stops at `eot_token` (when stop_at_eot) and is then padded with it;
    generation ends when every row has stopped or the budget is spent.
    on_token(step, tokens) is called with each new (B,) NumPy array of ids, for streaming.

    Returns NumPy ids shaped like the input: (T + n,), (B, T + n), or a list of lists (each
    row its own prompt plus its new tokens, up to and including the end-of-text token). With
    overflow="truncate" the prompts in the result are the truncated ones.
    """
    check_sampling_args(temperature, top_k, top_p)
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 0:
        raise PicoGPTError(f"the number of new tokens must be a whole number >= 0, got {max_new_tokens}.")
    prompts, kind = _as_prompts(ids)
    if not prompts or min(len(p) for p in prompts) == 0:
        raise PicoGPTError("a prompt is empty: give at least one token to continue.")
    config = model.config
    prompts = fit_context(prompts, max_new_tokens, config.n_ctx, overflow)
    for p in prompts:
        model.check_ids(p)  # one clear sentence for an id outside the vocabulary
    if eot_token is None or eot_token >= config.vocab_size:
        stop_at_eot = False

    B, lengths = len(prompts), [len(p) for p in prompts]
    P = max(lengths)
    pad = np.array([P - n for n in lengths])
    batch = np.zeros((B, P), dtype=np.int64)   # id 0 in the padding; the mask hides it
    for b, p in enumerate(prompts):
        batch[b, pad[b]:] = p
    # Each token comes back to the host as it is made only when something there must look at
    # it (the end-of-text check, streaming); otherwise the GPU runs ahead without waiting.
    to_host = stop_at_eot or on_token is not None
    xp, steps = model.xp, 0
    new = xp.zeros((B, max_new_tokens), dtype=np.int64)
    done = np.zeros(B, dtype=bool)
    rng = np.random.default_rng(seed)
    if max_new_tokens:
        kv = model.new_cache(B, P + max_new_tokens, pad=pad if pad.any() else None)

        def next_logits(ids):  # (B, T) on the device -> (B, V) for the last position
            return forward(model.params, config, ids, kv=kv, lora_scale=model.lora_scale,
                           last_only=True, keep_caches=False)[0]

        logits = next_logits(xp.asarray(batch))           # prefill: the whole prompt at once
        for steps in range(1, max_new_tokens + 1):
            tok = sample(logits, temperature, top_k, top_p, rng).astype(np.int64)   # (B,)
            if to_host:
                host = asnumpy(tok)
                if stop_at_eot:
                    host = np.where(done, eot_token, host)
                    done |= host == eot_token
                if on_token is not None:
                    on_token(steps - 1, host)
                tok = xp.asarray(host)
            new[:, steps - 1] = tok
            if steps == max_new_tokens or done.all():
                break
            logits = next_logits(tok[:, None])              # one new position per step
    new = asnumpy(new[:, :steps])
    if kind == "ragged":
        out = []
        for p, row in zip(prompts, new.tolist()):
            if stop_at_eot and eot_token in row:
                row = row[:row.index(eot_token) + 1]
            out.append(p + row)
        return out
    full = np.concatenate([np.array(prompts, dtype=np.int64).reshape(B, -1), new], axis=1)
    return full[0] if kind == "flat" else full


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
    from .tokenizer import get_tokenizer
    from .weights import load_model

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
