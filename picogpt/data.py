"""Text -> token files, and random training batches.

    python -m picogpt.data examples/shakespeare.txt --out data/shakespeare

writes `train.bin` and `val.bin` (GPT-2 token ids as uint16: every id < 65536) and `meta.json`.
`--tokenizer char` (one token per character of the text) or `--tokenizer bpe:N` (a byte-level
BPE of N tokens learned from the text) make the folder's own tokenizer instead, written to
`tokenizer.json` beside the ids (picogpt.tokenizers); `python -m picogpt.train` takes the model's
vocabulary from it and puts it in the model folder, where generate and eval find it.
The validation split is the LAST `--val-fraction` of the text (default 5%), so it is text the
model never saw, not a shuffled sample of it. Batches are random windows of the train split.

Examples for fine-tuning (JSON lines; the formats and the template are in picogpt.sft):

    python -m picogpt.data --task sft examples/dialogue/train.jsonl --val examples/dialogue/val.jsonl --out data/dialogue
    python -m picogpt.data --task classify examples/genre/train.jsonl --val examples/genre/val.jsonl --out data/genre
    python -m picogpt.data --task sft examples/dialogue/train.jsonl --show 2     # as the model sees them

write train/val examples with sft.write_examples (ids + offsets + loss masks, or labels) and a
meta.json whose "task" tells `python -m picogpt.train --data DIR` what to train. Without --val,
the last --val-fraction of the records is the validation split. A classifier's label names are
those of the training file, sorted (meta.json "label_names"); a validation record with another
label is an error naming its line.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from . import files, sft
from .cli import run_command
from .errors import PicoGPTError
from .files import atomic_open, make_folder, write_json
from .shards import load_shards, prepare_shards
from .tokenizer import get_tokenizer
from .tokenizers import MAX_VOCAB, make_tokenizer, read_tokenizer, stderr_log, write_tokenizer
from .tokenizers import kind as tokenizer_kind

DEFAULT_VAL_FRACTION = 0.05


def tokenize_file(path, purpose="to train on", tok=None):
    """Read a UTF-8 text file and tokenise it with `tok` (default GPT-2's BPE) -> uint16 ids (N,).

    purpose: what the text is for, in the message for an empty file ("to train on", "to score")."""
    return np.array((tok or get_tokenizer()).encode(read_text(path, purpose)), dtype=np.uint16)


def read_text(path, purpose="to train on"):
    """A UTF-8 text file's text; a missing, unreadable or empty file is one sentence."""
    text = files.read_text(path)
    if not text.strip():
        raise PicoGPTError(f"{path} is empty: there is no text {purpose}.")
    return text


def split(ids, val_fraction=DEFAULT_VAL_FRACTION):
    """(train, val): the last `val_fraction` of the tokens is the validation split."""
    if not 0.0 < val_fraction < 1.0:  # also refuses NaN
        raise PicoGPTError(f"the validation fraction (--val-fraction) must be between 0 and 1, got {val_fraction}.")
    n_val = max(1, int(len(ids) * val_fraction))
    return ids[:-n_val], ids[-n_val:]


def prepare(text_file, out_dir, val_fraction=DEFAULT_VAL_FRACTION, tokenizer="gpt2", log=None):
    """Tokenise `text_file` into out_dir/{train,val}.bin and meta.json; returns the meta dict.

    tokenizer: 'gpt2', 'char' or 'bpe:N' (made from the text, written to out_dir/tokenizer.json);
    log(str) shows a BPE's training progress."""
    text = read_text(text_file)
    split(np.arange(2), val_fraction)   # a bad fraction is refused before a BPE is trained
    tok = make_tokenizer(tokenizer, text, log)
    ids = np.array(tok.encode(text), dtype=np.uint16)
    train, val = split(ids, val_fraction)
    out = make_folder(out_dir, "output folder (--out)")
    write_tokenizer(tok, out)
    for name, part in (("train", train), ("val", val)):
        with atomic_open(out / f"{name}.bin") as f:
            f.write(part.tobytes())
    meta = {"source": str(text_file), "tokenizer": tokenizer_kind(tok), "vocab_size": tok.n_vocab,
            "dtype": "uint16", "tokens": int(len(ids)),
            "train_tokens": int(len(train)), "val_tokens": int(len(val)), "val_fraction": val_fraction,
            "split": "validation = the last val_fraction of the tokens"}
    write_json(out / "meta.json", meta)
    return meta


def data_tokenizer(data):
    """The tokenizer a data folder's ids belong to (its tokenizer.json; none: GPT-2's), checked
    against meta.json's "tokenizer"; a text file is tokenised with GPT-2's."""
    path = Path(data)
    if not path.is_dir():
        return get_tokenizer()
    tok, meta = read_tokenizer(path), path / "meta.json"
    try:
        said = json.loads(meta.read_text()).get("tokenizer", "gpt2") if meta.is_file() else "gpt2"
    except (OSError, ValueError, AttributeError):
        raise PicoGPTError(f"{meta} is not a readable meta.json: prepare {data} again with `python -m picogpt.data`.") from None
    if said != tokenizer_kind(tok):
        raise PicoGPTError(f"{meta} says the ids are {said} tokens but the folder's tokenizer.json is "
                           f"{tokenizer_kind(tok)}'s (none means gpt2): prepare {data} again with `python -m picogpt.data`.")
    return tok


def load_split(data, name):
    """The `name` split ('train' or 'val') of a prepared folder, as a read-only uint16 memmap."""
    path = Path(data) / f"{name}.bin"
    if not path.is_file():
        raise PicoGPTError(f"{path} is missing: prepare the data with `python -m picogpt.data TEXT --out {data}`.")
    size = path.stat().st_size
    if size < 2:
        raise PicoGPTError(f"{path} is empty: there is nothing to train on.")
    if size % 2:  # every token is 2 bytes, so an odd size means a cut or foreign file
        raise PicoGPTError(f"{path} has an odd number of bytes ({size:,}), so it is not a file of 2-byte token ids: "
                           f"it was cut short or not made by picogpt.data; prepare it again with "
                           f"`python -m picogpt.data TEXT --out {data}`.")
    return np.memmap(path, dtype=np.uint16, mode="r")


def load_dataset(data, val_fraction=None):
    """(train, val) token arrays from a prepared folder or directly from a text file.

    val_fraction (default 0.05) splits a text file; a folder's split was fixed by picogpt.data,
    so giving one with a folder is an error rather than silently ignored."""
    path = Path(data)
    if path.is_dir():
        if val_fraction is not None:
            raise PicoGPTError(f"--val-fraction applies to a text file, but {data} is a prepared folder whose split "
                               "was fixed by `python -m picogpt.data ... --val-fraction F`: drop --val-fraction "
                               "or prepare the folder again.")
        if load_shards(path, "train") is not None:  # a sharded corpus (picogpt/shards.py)
            val = load_shards(path, "val")
            if val is None:
                raise PicoGPTError(f"{data} has train shards but no val_000000.bin: prepare it again with "
                                   "`python -m picogpt.data FILES_OR_FOLDERS --out DIR`.")
            return load_shards(path, "train"), val
        return load_split(path, "train"), load_split(path, "val")
    if path.is_file():
        return split(tokenize_file(path), DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction)
    raise PicoGPTError(f"no data at {data}: give a text file or a folder made by `python -m picogpt.data`.")


def check_length(ids, block_size, name="train"):
    """A window of block_size + 1 tokens (inputs and their next-token targets) must fit."""
    if len(ids) < block_size + 1:
        raise PicoGPTError(f"the {name} split has {len(ids)} tokens, too few for one window of {block_size} + 1: "
                           "use a longer text or a smaller --block-size.")


def get_batch(ids, batch_size, block_size, rng, rows=slice(None)):
    """Random windows: x (B, T) and y (B, T) = x shifted one token left, as int64 NumPy arrays.

    rows: which rows of the batch to build (a rank's share): all B starts are drawn, these read."""
    starts = rng.integers(0, len(ids) - block_size, size=batch_size)[rows]
    x = np.stack([ids[s:s + block_size] for s in starts]).astype(np.int64)
    y = np.stack([ids[s + 1:s + 1 + block_size] for s in starts]).astype(np.int64)
    return x, y


# --- examples: SFT and classification (JSONL -> picogpt.sft's on-disk format) ---------------

TASKS = ("lm", "sft", "classify")


def encode_examples(task, path, tok, label_names=None):
    """A JSONL file's examples: (ids list, masks or None, labels or None, label names)."""
    if task == "sft":
        pairs = [sft.encode_record(turns, tok) for turns in sft.read_sft_jsonl(path)]
        return [p[0] for p in pairs], [p[1] for p in pairs], None, None
    texts, labels, names = sft.read_classify_jsonl(path, label_names)
    ids = [tok.encode_ordinary(t) for t in texts]
    for (n, _), row in zip(sft.read_jsonl(path), ids):
        if not row:
            raise PicoGPTError(f"{path} line {n}: 'text' is empty: there is nothing to classify.")
    return ids, None, labels, names


def prepare_examples(task, train_file, out_dir, val_file=None, val_fraction=DEFAULT_VAL_FRACTION):
    """Tokenise a JSONL file of SFT or classification records into out_dir (train + val
    splits, see picogpt.sft.write_examples); returns meta.json's dict."""
    if task not in ("sft", "classify"):
        raise PicoGPTError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}.")
    tok = get_tokenizer()
    train = encode_examples(task, train_file, tok)
    names = train[3]
    if val_file is not None:
        val = encode_examples(task, val_file, tok, names)
    else:  # the last records, as a text's validation split is its end
        keep, held = split(np.arange(len(train[0])), val_fraction)
        if len(keep) == 0:
            raise PicoGPTError(f"{train_file} holds {len(train[0])} record(s): too few to keep some for validation; "
                               "give --val FILE.")
        train, val = ([None if part is None else [part[i] for i in idx] for part in train[:3]] + [names]
                      for idx in (keep, held))
    out = make_folder(out_dir, "output folder (--out)")
    extra = {"label_names": names} if task == "classify" else {}
    source = {"train": str(train_file), "val": str(val_file) if val_file else f"the last records of {train_file}"}
    for name, part in (("train", train), ("val", val)):
        meta = sft.write_examples(out, name, part[0], masks=part[1], labels=part[2], task=task, source=source, **extra)
    return meta


def show_examples(task, path, count):
    """The first `count` records as the model sees them: SFT with trained spans in [[ ]]; a
    classification record as its label and its text."""
    tok = get_tokenizer()
    if task == "sft":
        return sft.show(path, tok, count)
    texts, labels, names = sft.read_classify_jsonl(path)
    return "\n".join(f"--- record {i + 1}: {len(tok.encode_ordinary(t))} tokens, label {names[y]!r} "
                     f"(id {y} of {len(names)}); the logits are read at the last token\n{t}"
                     for i, (t, y) in enumerate(list(zip(texts, labels))[:count]))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m picogpt.data",
                                description="Tokenise a UTF-8 text file with GPT-2's BPE into train.bin / val.bin (uint16).",
                                epilog="example:\n  python -m picogpt.data examples/shakespeare.txt --out data/shakespeare",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="+", help="a UTF-8 text file; or several .txt / .jsonl files or folders of them, "
                                           "tokenised in parallel into shards (picogpt/shards.py)")
    p.add_argument("--out", default=None, help="output folder (default: data/<file name without suffix>)")
    p.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                   help=f"the last fraction kept for validation (default {DEFAULT_VAL_FRACTION})")
    p.add_argument("--tokenizer", default="gpt2", metavar="gpt2|char|bpe:N",
                   help="gpt2: GPT-2's BPE (default); char: one token per character of the text; bpe:N: a "
                        f"byte-level BPE of N tokens (256 <= N <= {MAX_VOCAB:,}) learned from the text; the folder "
                        "keeps it in tokenizer.json and a model trained on it carries it")
    p.add_argument("--task", choices=TASKS, default="lm",
                   help="lm: a text to predict (default); sft: JSONL prompt/response or chat records; "
                        "classify: JSONL {\"text\", \"label\"} records")
    p.add_argument("--val", default=None, metavar="FILE",
                   help="sft/classify: a JSONL file for the validation split (default: the last --val-fraction of the records)")
    p.add_argument("--show", type=int, default=None, metavar="N",
                   help="sft/classify: print the first N records as the model sees them (trained tokens in [[ ]]) "
                        "and write nothing")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="shards: tokens per shard (default 100M)")
    p.add_argument("--workers", type=int, default=None, help="shards: tokenising processes (default: one per core)")
    return run_command(_prepare_command, p.parse_args(argv))


def _prepare_command(args):
    sources, args.text = args.text, args.text[0]
    if len(sources) > 1 or Path(args.text).is_dir() or (args.task == "lm" and Path(args.text).suffix == ".jsonl"):
        return _shards_command(args, sources)
    if args.tokenizer != "gpt2" and args.task != "lm":
        raise PicoGPTError("--tokenizer char or bpe:N makes a tokenizer from a text (--task lm); examples for "
                           "fine-tuning use GPT-2's.")
    if args.task != "lm":
        return _examples_command(args)
    if args.val is not None or args.show is not None:
        raise PicoGPTError("--val and --show are for --task sft or --task classify (JSONL records); "
                           "a text's validation split is its last --val-fraction.")
    out = args.out or str(Path("data") / Path(args.text).stem)
    meta = prepare(args.text, out, args.val_fraction, args.tokenizer, stderr_log)
    print(f"{meta['tokens']:,} {meta['tokenizer']} tokens (vocabulary {meta['vocab_size']:,}) -> {out}/train.bin "
          f"({meta['train_tokens']:,}) and val.bin ({meta['val_tokens']:,})")


def _shards_command(args, sources):
    if args.task != "lm" or args.tokenizer != "gpt2" or args.val is not None or args.show is not None:
        raise PicoGPTError("several files, a folder or a .jsonl corpus become GPT-2 token shards: --task, --tokenizer, "
                           "--val and --show apply to one file.")
    out = args.out or str(Path("data") / Path(args.text).stem)
    meta = prepare_shards(sources, out, args.val_fraction, args.shard_tokens, args.workers)
    print(f"{meta['tokens']:,} tokens -> {out}/: {meta['train_shards']} train shard(s) ({meta['train_tokens']:,} tokens) "
          f"and {meta['val_shards']} val shard(s) ({meta['val_tokens']:,})")


def _examples_command(args):
    if args.show is not None:
        if args.show < 1:
            raise PicoGPTError(f"--show must be >= 1 record, got {args.show}.")
        print(show_examples(args.task, args.text, args.show))
        return
    stem = Path(args.text).stem
    out = args.out or str(Path("data") / (Path(args.text).resolve().parent.name if stem == "train" else stem))
    meta = prepare_examples(args.task, args.text, out, args.val, args.val_fraction)
    counts = meta["splits"]
    labels = f"; labels {', '.join(meta['label_names'])}" if args.task == "classify" else ""
    print(f"{args.task}: {counts['train']['examples']:,} train / {counts['val']['examples']:,} val examples "
          f"({counts['train']['tokens']:,} / {counts['val']['tokens']:,} tokens, longest "
          f"{max(c['longest'] for c in counts.values())}){labels} -> {out}/")


if __name__ == "__main__":
    sys.exit(main())
