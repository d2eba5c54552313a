"""Token shards: a corpus of any size as files of GPT-2 tokens, read by memory map.

    python -m picogpt.data corpus/ --out data/corpus            # every .txt / .jsonl under a folder
    python -m picogpt.data a.txt b.jsonl --out data/corpus       # or a list of files

The files are tokenised in parallel processes (one file per task) with a progress bar on stderr.

A shard is llm.c's `.bin` format, so shards move between the two projects:

    header   256 int32, little-endian: [0] magic 20240520, [1] version 1, [2] token count, rest 0
    tokens   token count x uint16, little-endian (every GPT-2 id is < 65536)

The output folder holds train_000000.bin, train_000001.bin, ..., val_000000.bin, ... and
meta.json. Documents: each .txt file is one document; each line of a .jsonl file is one, its
"text" field. Every document starts with <|endoftext|> (50256), the separator GPT-2 was trained
with. The validation split is the last `val_fraction` of the token stream (files in sorted
order), as in the single-file format: text the model never trains on.

Training reads a split as one long array over all its shards (`ShardedTokens`): a random window
is drawn uniformly over the whole split, so each shard is sampled in proportion to its size,
and a window that crosses from one shard into the next simply continues there.
"""

import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

from .errors import PicoGPTError
from .files import atomic_open, make_folder, write_json
from .tokenizer import get_tokenizer

MAGIC, VERSION = 20240520, 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
SUFFIXES = (".txt", ".jsonl")
EOT = 50256


# --- one shard ------------------------------------------------------------------------------

def write_shard(path, tokens):
    """Write uint16 tokens (N,) to `path` atomically, header first."""
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = MAGIC, VERSION, len(tokens)
    with atomic_open(path) as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype="<u2").tobytes())


def read_shard(path):
    """The tokens of one shard as a read-only uint16 memmap (N,), the header checked first."""
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise PicoGPTError(f"{path} is truncated: it is {size} bytes, shorter than a shard's {HEADER_BYTES}-byte "
                           "header; tokenise the text again with `python -m picogpt.data`.")
    magic, version, count = np.fromfile(path, dtype="<i4", count=3)
    if magic != MAGIC:
        raise PicoGPTError(f"{path} is not a token shard (its first number is {magic}, not {MAGIC}).")
    if version != VERSION:
        raise PicoGPTError(f"{path} is a version {version} shard; this picogpt reads version {VERSION}.")
    if size != HEADER_BYTES + 2 * int(count):
        raise PicoGPTError(f"{path} is truncated: its header promises {count:,} tokens but the file holds "
                           f"{(size - HEADER_BYTES) // 2:,}; tokenise the text again with `python -m picogpt.data`.")
    if count == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(int(count),))


class ShardedTokens:
    """Several shards read as one long 1-D array of tokens: len(), a[i:j] (any window, across
    shard boundaries too) and max(), which is all that batches and checks need."""

    def __init__(self, paths):
        self.paths = [Path(p) for p in paths]
        self.shards = [read_shard(p) for p in self.paths]
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])   # where each shard begins

    def __len__(self):
        return int(self.starts[-1])

    def __getitem__(self, window):
        if not isinstance(window, slice) or window.step not in (None, 1):
            raise TypeError("ShardedTokens supports windows a[i:j] only")
        start, stop, _ = window.indices(len(self))
        parts, i = [], int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < stop:
            lo = start - self.starts[i]
            take = min(stop - start, len(self.shards[i]) - lo)
            parts.append(self.shards[i][lo:lo + take])
            start += take
            i += 1
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)

    def max(self):
        return max(int(s.max()) for s in self.shards if len(s))


def load_shards(folder, split):
    """The `split` ('train' or 'val') of a shard folder as ShardedTokens; None if it has none."""
    paths = sorted(Path(folder).glob(f"{split}_[0-9][0-9][0-9][0-9][0-9][0-9].bin"))
    if not paths:
        return None
    tokens = ShardedTokens(paths)
    if not len(tokens):
        raise PicoGPTError(f"the {split} shards in {folder} hold no tokens: there is nothing to train on.")
    return tokens


# --- a corpus -> shards ------------------------------------------------------------------------

def find_inputs(inputs):
    """The .txt / .jsonl files named, or found under the folders named, sorted; checked."""
    files = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise PicoGPTError(f"no file or folder at {name}.")
    if not files:
        raise PicoGPTError(f"found no .txt or .jsonl files in {', '.join(map(str, inputs))}.")
    return files


def documents(path):
    """The documents of one file: the whole text of a .txt, the "text" field of each JSONL line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PicoGPTError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
    if Path(path).suffix != ".jsonl":
        return [text] if text.strip() else []
    docs = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            docs.append(record["text"])
        except (ValueError, KeyError, TypeError):
            raise PicoGPTError(f"{path}, line {n}: each line must be a JSON object with a \"text\" string.") from None
        if not isinstance(docs[-1], str):
            raise PicoGPTError(f"{path}, line {n}: \"text\" must be a string.")
    return docs


def tokenize_documents(path):
    """One file -> uint16 tokens: <|endoftext|> then the document's tokens, for each document.
    (Run in the worker processes; each builds its own tokenizer once.)"""
    tok = get_tokenizer()
    out = []
    for doc in documents(path):
        out.append(np.array([EOT] + tok.encode_ordinary(doc), dtype=np.uint16))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint16)


def prepare_shards(inputs, out_dir, val_fraction=0.05, shard_tokens=100_000_000, workers=None, progress=True):
    """Tokenise every input file (in parallel) into out_dir's train/val shards and meta.json.

    The token stream is first written to one temporary file (so memory holds one file's tokens
    at a time), then cut into the validation tail and shards of `shard_tokens`. Returns meta.
    """
    if not 0.0 < val_fraction < 1.0:
        raise PicoGPTError(f"the validation fraction must be in (0, 1), got {val_fraction}.")
    if shard_tokens < 1:
        raise PicoGPTError(f"a shard must hold at least 1 token, got {shard_tokens}.")
    files = find_inputs(inputs)
    out = make_folder(out_dir)
    for old in list(out.glob("train_*.bin")) + list(out.glob("val_*.bin")):
        old.unlink()   # a previous run's shards would otherwise be read together with these
    stream = out / f".stream.tmp-{os.getpid()}"
    workers = max(1, min(workers or os.cpu_count() or 1, len(files)))
    bar = Progress(len(files), progress)
    try:
        with open(stream, "wb") as f:
            ctx = multiprocessing.get_context("spawn" if sys.platform == "win32" else "fork")
            with ctx.Pool(workers) as pool:
                for tokens in pool.imap(tokenize_documents, files):
                    f.write(tokens.astype("<u2").tobytes())
                    bar.update(len(tokens))
        bar.close()
        ids = np.memmap(stream, dtype="<u2", mode="r") if stream.stat().st_size else np.zeros(0, np.uint16)
        if len(ids) < 2:
            raise PicoGPTError(f"{', '.join(map(str, inputs))} hold no text: there is nothing to train on.")
        n_val = max(1, int(len(ids) * val_fraction))
        counts = {}
        for split, part in (("train", ids[:-n_val]), ("val", ids[-n_val:])):
            starts = range(0, len(part), shard_tokens)
            for i, s in enumerate(starts):
                write_shard(out / f"{split}_{i:06d}.bin", part[s:s + shard_tokens])
            counts[split] = (len(part), len(starts))
        del ids
    finally:
        if stream.exists():
            stream.unlink()
    meta = {"source": [str(p) for p in files], "tokenizer": "gpt2", "format": "llm.c .bin: 256 int32 header "
            f"(magic {MAGIC}, version {VERSION}, token count) + uint16 tokens", "documents": "each preceded by <|endoftext|>",
            "tokens": counts["train"][0] + counts["val"][0], "train_tokens": counts["train"][0],
            "val_tokens": counts["val"][0], "train_shards": counts["train"][1], "val_shards": counts["val"][1],
            "shard_tokens": shard_tokens, "val_fraction": val_fraction,
            "split": "validation = the last val_fraction of the tokens"}
    write_json(out / "meta.json", meta)
    return meta


class Progress:
    """A one-line progress bar on stderr: files done, tokens so far, tokens per second."""

    def __init__(self, total, enabled=True, width=30):
        self.total, self.enabled, self.width = total, enabled, width
        self.done, self.tokens, self.t0 = 0, 0, time.perf_counter()

    def update(self, tokens):
        self.done += 1
        self.tokens += tokens
        if self.enabled:
            filled = self.width * self.done // self.total
            rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} files, "
                             f"{self.tokens:,} tokens, {rate:,.0f} tokens/s")
            sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")
