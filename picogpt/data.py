"""Text -> token files, and random training batches.

    python -m picogpt.data examples/shakespeare.txt --out data/shakespeare

writes `train.bin` and `val.bin` (GPT-2 token ids as uint16: every id < 65536) and `meta.json`.
The validation split is the LAST `--val-fraction` of the text (default 5%), so it is text the
model never saw, not a shuffled sample of it. Batches are random windows of the train split.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from .cli import run_command
from .errors import PicoGPTError
from .files import atomic_open, write_json
from .tokenizer import get_tokenizer


def tokenize_file(path):
    """Read a UTF-8 text file and tokenise it with GPT-2's BPE -> uint16 ids (N,)."""
    path = Path(path)
    if not path.is_file():
        raise PicoGPTError(f"no text file at {path}.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PicoGPTError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}).") from None
    except OSError as e:
        raise PicoGPTError(f"cannot read {path} ({e.strerror or e}).") from None
    if not text.strip():
        raise PicoGPTError(f"{path} is empty: there is nothing to train on.")
    return np.array(get_tokenizer().encode(text), dtype=np.uint16)


def split(ids, val_fraction=0.05):
    """(train, val): the last `val_fraction` of the tokens is the validation split."""
    if not 0.0 < val_fraction < 1.0:
        raise PicoGPTError(f"the validation fraction must be in (0, 1), got {val_fraction}.")
    n_val = max(1, int(len(ids) * val_fraction))
    return ids[:-n_val], ids[-n_val:]


def prepare(text_file, out_dir, val_fraction=0.05):
    """Tokenise `text_file` into out_dir/{train,val}.bin and meta.json; returns the meta dict."""
    ids = tokenize_file(text_file)
    train, val = split(ids, val_fraction)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("val", val)):
        with atomic_open(out / f"{name}.bin") as f:
            f.write(part.tobytes())
    meta = {"source": str(text_file), "tokenizer": "gpt2", "dtype": "uint16", "tokens": int(len(ids)),
            "train_tokens": int(len(train)), "val_tokens": int(len(val)), "val_fraction": val_fraction,
            "split": "validation = the last val_fraction of the tokens"}
    write_json(out / "meta.json", meta)
    return meta


def load_split(data, name):
    """The `name` split ('train' or 'val') of a prepared folder, as a read-only uint16 memmap."""
    path = Path(data) / f"{name}.bin"
    if not path.is_file():
        raise PicoGPTError(f"{path} is missing: prepare the data with `python -m picogpt.data TEXT --out {data}`.")
    if path.stat().st_size < 2:
        raise PicoGPTError(f"{path} is empty: there is nothing to train on.")
    return np.memmap(path, dtype=np.uint16, mode="r")


def load_dataset(data, val_fraction=0.05):
    """(train, val) token arrays from a prepared folder or directly from a text file."""
    path = Path(data)
    if path.is_dir():
        return load_split(path, "train"), load_split(path, "val")
    if path.is_file():
        return split(tokenize_file(path), val_fraction)
    raise PicoGPTError(f"no data at {data}: give a text file or a folder made by `python -m picogpt.data`.")


def check_length(ids, block_size, name="train"):
    """A window of block_size + 1 tokens (inputs and their next-token targets) must fit."""
    if len(ids) < block_size + 1:
        raise PicoGPTError(f"the {name} split has {len(ids)} tokens, too few for one window of {block_size} + 1: "
                           "use a longer text or a smaller --block-size.")


def get_batch(ids, batch_size, block_size, rng):
    """Random windows: x (B, T) and y (B, T) = x shifted one token left, as int64 NumPy arrays."""
    starts = rng.integers(0, len(ids) - block_size, size=batch_size)
    x = np.stack([ids[s:s + block_size] for s in starts]).astype(np.int64)
    y = np.stack([ids[s + 1:s + 1 + block_size] for s in starts]).astype(np.int64)
    return x, y


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m picogpt.data",
                                description="Tokenise a UTF-8 text file with GPT-2's BPE into train.bin / val.bin (uint16).",
                                epilog="example:\n  python -m picogpt.data examples/shakespeare.txt --out data/shakespeare",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", help="a UTF-8 text file")
    p.add_argument("--out", default=None, help="output folder (default: data/<file name without suffix>)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="the last fraction kept for validation (default 0.05)")
    return run_command(_prepare_command, p.parse_args(argv))


def _prepare_command(args):
    out = args.out or str(Path("data") / Path(args.text).stem)
    meta = prepare(args.text, out, args.val_fraction)
    print(f"{meta['tokens']:,} tokens -> {out}/train.bin ({meta['train_tokens']:,}) and val.bin ({meta['val_tokens']:,})")


if __name__ == "__main__":
    sys.exit(main())
