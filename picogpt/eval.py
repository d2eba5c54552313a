"""Evaluate a model: `python -m picogpt.eval --task lm|generate|choice|lambada`.

    --task lm (the default) --text FILE         loss and perplexity of a text (below)
    --task generate --data pairs.jsonl          generate for each {"prompt", "reference"} (or
                                                "references": a list) record, batched; BLEU,
                                                ROUGE-1/2/L, distinct-1/2; predictions to JSONL
    --task choice --data FILE.jsonl             multiple choice in HellaSwag's format (ctx,
                                                endings, label): acc and acc_norm (picogpt.score)
    --task lambada --data FILE                  one passage per line: last-word accuracy and
                                                perplexity, as the GPT-2 paper (picogpt.score)
    --task classify --data FILE.jsonl|DIR       a classifier on {"text", "label"} records (or an
                                                examples folder's val split): accuracy, macro-F1,
                                                the confusion matrix
    --task sft --data FILE.jsonl|DIR            loss per trained token of SFT records (or an
                                                examples folder's val split), as training counts it

A text longer than the context is scored in sliding windows: each window is `context` tokens
long and starts `stride` tokens after the previous one, and only the tokens not scored by an
earlier window count, so every token after the first is scored exactly once, and (after the
first window) with at least context - stride tokens of history. stride = context scores
disjoint chunks (fast, less context per token); a smaller stride is slower and closer to the
model's best.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from . import metrics
from . import score as scoring
from . import sft
from .cli import clock, run_command
from .files import atomic_open
from .generate import add_decoding_arguments, decoding_options
from .generation import OVERFLOW_RULES, cut_at_stop, generate
from .heads import check_language_model
from .sampling import check_sampling_args
from .sft import read_jsonl
from .memory import check_fits, inference_bytes
from .data import split, tokenize_file
from .errors import PicoGPTError
from .tokenizers import get_tokenizer
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
        description="Evaluate a model: loss and perplexity of a UTF-8 text (--task lm, sliding windows), "
                    "generation scored by BLEU/ROUGE (--task generate), multiple choice (--task choice) or LAMBADA.",
        epilog="examples:\n"
               "  python -m picogpt.eval --text examples/shakespeare.txt --tail 0.05     # the bundled model on its validation split\n"
               "  python -m picogpt.eval --model gpt2 --text essay.txt --stride 512\n"
               "  python -m picogpt.eval --task generate --data pairs.jsonl --model gpt2 --num-beams 4 --stop \"\\n\"\n"
               "  python -m picogpt.eval --task choice --data hellaswag_val.jsonl --model gpt2\n"
               "  python -m picogpt.eval --task lambada --data lambada_test.txt --model gpt2")
    p.add_argument("--task", default="lm", choices=sorted(TASKS),
                   help="lm: loss of --text (default); generate, choice, lambada: read --data")
    p.add_argument("--model", default=None, metavar="NAME|DIR", help="shakespeare (the bundled model, the default), gpt2, ..., or a checkpoint folder")
    p.add_argument("--text", default=None, help="--task lm: a UTF-8 text file")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="generate: JSONL of {prompt, reference|references}; choice: JSONL of {ctx, endings, label}; "
                        "lambada: one passage per line; classify: JSONL of {text, label} or a folder from "
                        "`picogpt.data --task classify` (its val split); sft: JSONL records or a --task sft folder")
    p.add_argument("--tail", type=float, default=None, metavar="F",
                   help="score only the last fraction F of the tokens, 0 < F <= 1 (0.05 = picogpt.data's validation split)")
    p.add_argument("--context", type=int, default=None,
                   help="window length, at most the model's context (default: the model's context)")
    p.add_argument("--stride", type=int, default=None, help="window step (default: half the context)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="windows (lm), records (generate) or scored pairs (choice, lambada) per forward pass (default 8)")
    p.add_argument("--device", default=None, choices=["cpu", "gpu"], help="cpu or gpu (default: $PICOGPT_DEVICE or cpu)")
    g = p.add_argument_group("--task generate")
    g.add_argument("--out", default=None, metavar="FILE",
                   help="where the predictions go, one JSON line per record (default: DATA with .predictions.jsonl)")
    g.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="tokens per prediction at most (default 64)")
    g.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (the default), > 0 samples")
    g.add_argument("--top-k", type=int, default=None, metavar="K", help="sample among the K most likely tokens")
    g.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling")
    g.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    g.add_argument("--overflow", default="error", choices=OVERFLOW_RULES,
                   help="a prompt + new tokens longer than the context: error (default), truncate or slide")
    add_decoding_arguments(p)
    return run_command(_eval_command, p.parse_args(argv))


def _eval_command(args):
    if args.batch_size < 1:
        raise PicoGPTError(f"--batch-size must be >= 1, got {args.batch_size}.")
    return TASKS[args.task](args)


def _lm_command(args):
    if args.text is None:
        raise PicoGPTError("--task lm scores a text: give it with --text FILE (or choose --task generate, choice or lambada with --data).")
    if args.context is not None and args.context < 2:
        raise PicoGPTError(f"--context must be >= 2, got {args.context}.")
    if args.tail is not None and not 0.0 < args.tail <= 1.0:  # also refuses NaN
        raise PicoGPTError(f"--tail must be a fraction above 0 and at most 1 (0.05 = the last 5% of the tokens), got {args.tail}.")
    model = load_model(args.model, device=args.device)
    ids = tokenize_file(args.text, "to score", get_tokenizer(model))   # the model's own tokenizer
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


# --- --task generate, choice, lambada ------------------------------------------------------------

def _progress(what):
    """A progress bar on stderr: progress(done, total)."""
    t0 = time.perf_counter()

    def show(done, total):
        bar = "#" * (20 * done // max(total, 1))
        print(f"\r  {what} [{bar:20s}] {done}/{total} {clock(time.perf_counter() - t0)}", end="", file=sys.stderr, flush=True)
        if done == total:
            print(file=sys.stderr)
    return show


def _data(args):
    if args.data is None:
        raise PicoGPTError(f"--task {args.task} reads --data FILE: give the file to evaluate on.")
    return Path(args.data)


def read_pairs(path):
    """[(prompt, [references])] of a JSONL file of {"prompt", "reference"} or {"prompt", "references"}
    records; a record without a prompt or a reference is one sentence naming its line."""
    pairs = []
    for n, obj in read_jsonl(path):
        refs = obj.get("references", [obj["reference"]] if "reference" in obj else None)
        if refs is None:
            raise PicoGPTError(f"{path} line {n} has no reference: each record needs \"prompt\" and \"reference\" "
                               f"(a string) or \"references\" (a list of strings).")
        if isinstance(refs, str):
            refs = [refs]
        if not isinstance(obj.get("prompt"), str) or not obj["prompt"]:
            raise PicoGPTError(f"{path} line {n} has no prompt: each record needs a non-empty \"prompt\" string.")
        if not refs or not all(isinstance(r, str) for r in refs):
            raise PicoGPTError(f"{path} line {n}: the references must be strings (at least one).")
        pairs.append((obj["prompt"], refs))
    return pairs


def generate_predictions(model, tok, prompts, max_new_tokens, batch_size=8, progress=None, **options):
    """The continuation text of each prompt (ending before a stop string), `batch_size` prompts
    at a time; `options` are generate's (temperature, num_beams, stop, ...)."""
    stop, out = options.get("stop"), []
    for start in range(0, len(prompts), batch_size):
        ids = [tok.encode(p) for p in prompts[start:start + batch_size]]
        rows = generate(model, ids, max_new_tokens, eot_token=tok.eot_token, **options)
        for p, row in zip(ids, rows):
            new = [t for t in row[len(p):] if t != tok.eot_token]
            out.append(cut_at_stop(tok.decode(new), stop))
        if progress:
            progress(len(out), len(prompts))
    return out


def _generate_command(args):
    path = _data(args)
    if args.max_new_tokens < 1:
        raise PicoGPTError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}.")
    check_sampling_args(args.temperature, args.top_k, args.top_p)
    options = dict(decoding_options(args), temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   seed=args.seed, overflow=args.overflow)
    if options["num_return_sequences"] != 1:
        raise PicoGPTError("--task generate scores one prediction per record: leave --num-return-sequences at 1.")
    out = Path(args.out) if args.out else path.with_name(path.name.rsplit(".", 1)[0] + ".predictions.jsonl")
    pairs = read_pairs(path)
    model = load_model(args.model, device=args.device)
    tok = get_tokenizer(model)
    t0 = time.perf_counter()
    predictions = generate_predictions(model, tok, [p for p, _ in pairs], args.max_new_tokens, args.batch_size,
                                       _progress("generate"), **options)
    scores = metrics.generation_scores(predictions, [refs for _, refs in pairs])
    with atomic_open(out, "w") as f:
        for (prompt, refs), pred in zip(pairs, predictions):
            f.write(json.dumps({"prompt": prompt, "prediction": pred, "references": refs}, ensure_ascii=False) + "\n")
    print(f"{path}: {len(pairs)} records, model {args.model or 'shakespeare (bundled)'}, "
          f"{time.perf_counter() - t0:.1f} s; predictions in {out}")
    print(f"BLEU {scores['bleu']:.2f}  ROUGE-1 {scores['rouge1']:.4f}  ROUGE-2 {scores['rouge2']:.4f}  "
          f"ROUGE-L {scores['rougeL']:.4f}  distinct-1 {scores['distinct1']:.4f}  distinct-2 {scores['distinct2']:.4f}")


def _choice_command(args):
    path = _data(args)
    records = [obj for _, obj in read_jsonl(path)]
    model = load_model(args.model, device=args.device)
    tok = get_tokenizer(model)
    t0 = time.perf_counter()
    r = scoring.choice_accuracy(model, tok, records, args.batch_size, _progress("score"))
    print(f"{path}: {r['n']} questions, model {args.model or 'shakespeare (bundled)'}, {time.perf_counter() - t0:.1f} s")
    print(f"acc {r['acc']:.4f}  acc_norm {r['acc_norm']:.4f}")


def _lambada_command(args):
    path = _data(args)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PicoGPTError(f"no file at {path}: give a text with one passage per line.") from None
    except UnicodeDecodeError as e:
        raise PicoGPTError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
    model = load_model(args.model, device=args.device)
    tok = get_tokenizer(model)
    t0 = time.perf_counter()
    r = scoring.lambada(model, tok, lines, args.batch_size, _progress("score"))
    print(f"{path}: {r['n']} passages ({r['tokens']} last-word tokens), model {args.model or 'shakespeare (bundled)'}, "
          f"{time.perf_counter() - t0:.1f} s")
    print(f"last-word accuracy {r['acc']:.4f}  perplexity {r['ppl']:.2f}")


# --- --task classify, sft: examples (picogpt.sft's records or a folder of them) ----------------

def _examples(args, task):
    """(the path, what it is, Examples or None, records' file or None) of --data for `task`."""
    path = _data(args)
    if path.is_dir():
        meta = sft.read_meta(path)
        if meta.get("task") != task:
            raise PicoGPTError(f"{path} holds {meta.get('task') or 'plain text'} data, not {task} examples: prepare "
                               f"it with `python -m picogpt.data --task {task}`, or give a JSONL file.")
        return path, f"{path} (validation split)", sft.load_examples(path, "val")
    return path, str(path), None


def _classify_command(args):
    """Accuracy, macro-F1 and the confusion matrix of a classifier on labelled examples."""
    path, what, examples = _examples(args, "classify")
    model = load_model(args.model, device=args.device)
    if not model.config.labels:
        raise PicoGPTError(f"{args.model or 'the bundled model'} is a language model, not a classifier: fine-tune one "
                           "with `python -m picogpt.train --data DIR` on `--task classify` data.")
    labels = list(model.config.labels)
    if examples is None:
        texts, truth, _ = sft.read_classify_jsonl(path, labels)   # an unknown label names its line
        rows = texts
    else:
        names = examples.meta.get("label_names") or []
        unknown = sorted(set(names) - set(labels))
        if unknown:
            raise PicoGPTError(f"{path}'s labels include {unknown[0]!r}, which the model does not know "
                               f"(its labels: {', '.join(labels)}).")
        truth = [labels.index(names[y]) for y in examples.labels]
        rows = [examples[i][0] for i in range(len(examples))]
    t0 = time.perf_counter()
    logits = model.classify(rows, batch_size=args.batch_size)
    pred = [int(k) for k in logits.argmax(axis=-1)]
    truth_names, pred_names = [labels[k] for k in truth], [labels[k] for k in pred]
    counts = metrics.confusion_matrix(truth_names, pred_names, labels)
    print(f"{what}: {len(rows)} examples, model {args.model or 'shakespeare (bundled)'}, "
          f"{time.perf_counter() - t0:.1f} s")
    print(f"accuracy {metrics.accuracy(truth_names, pred_names):.4f}  "
          f"macro-F1 {metrics.f1(truth_names, pred_names, labels):.4f}")
    width = max(len(n) for n in labels + ["truth"]) + 2
    print("confusion matrix (rows: truth, columns: predicted)")
    print(" " * width + "".join(f"{n:>{width}}" for n in labels))
    for name, row in zip(labels, counts):
        print(f"{name:<{width}}" + "".join(f"{int(c):>{width}}" for c in row))


def _sft_command(args):
    """Mean loss per trained token (the replies and their <|endoftext|>) of SFT examples."""
    path, what, examples = _examples(args, "sft")
    model = load_model(args.model, device=args.device)
    check_language_model(model, args.model)
    if examples is None:
        tok = get_tokenizer(model)
        pairs = [sft.encode_record(turns, tok) for turns in sft.read_sft_jsonl(path)]
        examples = sft.Examples(np.concatenate([p[0] for p in pairs]),
                                np.cumsum([0] + [len(p[0]) for p in pairs]), np.concatenate([p[1] for p in pairs]))
    batches = sft.ExampleBatches(examples, args.batch_size, model.config.n_ctx)
    t0, total, count = time.perf_counter(), 0.0, 0
    progress = _progress("score")
    for i in range(len(batches)):
        x, y = batches.next()
        n = int((y != sft.IGNORE_INDEX).sum())
        total, count = total + model.loss(x, y) * n, count + n
        progress(i + 1, len(batches))
    print(f"{what}: {len(examples)} examples ({batches.truncated} cut to the context of {model.config.n_ctx}), "
          f"model {args.model or 'shakespeare (bundled)'}, {time.perf_counter() - t0:.1f} s")
    print(f"loss {total / count:.4f} nats per trained token ({count:,} tokens), perplexity {math.exp(total / count):.2f}")


TASKS = {"lm": _lm_command, "generate": _generate_command, "choice": _choice_command, "lambada": _lambada_command,
         "classify": _classify_command, "sft": _sft_command}


if __name__ == "__main__":
    sys.exit(main())
