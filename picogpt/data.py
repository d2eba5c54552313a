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
from .files import atomic_open, make_folder, write_json
from .tokenizer import get_tokenizer

DEFAULT_VAL_FRACTION = 0.05


def tokenize_file(path, purpose="to train on"):
    """Read a UTF-8 text file and tokenise it with GPT-2's BPE -> uint16 ids (N,).

    purpose: what the text is for, in the message for an empty file ("to train on", "to score")."""
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
        raise PicoGPTError(f"{path} is empty: there is no text {purpose}.")
    return np.array(get_tokenizer().encode(text), dtype=np.uint16)


def split(ids, val_fraction=DEFAULT_VAL_FRACTION):
    """(train, val): the last `val_fraction` of the tokens is the validation split."""
    if not 0.0 < val_fraction < 1.0:  # also refuses NaN
        raise PicoGPTError(f"the validation fraction (--val-fraction) must be between 0 and 1, got {val_fraction}.")
    n_val = max(1, int(len(ids) * val_fraction))
    return ids[:-n_val], ids[-n_val:]


def prepare(text_file, out_dir, val_fraction=DEFAULT_VAL_FRACTION):
    """Tokenise `text_file` into out_dir/{train,val}.bin and meta.json; returns the meta dict."""
    ids = tokenize_file(text_file)
    train, val = split(ids, val_fraction)
    out = make_folder(out_dir, "output folder (--out)")
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
        return load_split(path, "train"), load_split(path, "val")
    if path.is_file():
        return split(tokenize_file(path), DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction)
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
    p.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                   help=f"the last fraction kept for validation (default {DEFAULT_VAL_FRACTION})")
    return run_command(_prepare_command, p.parse_args(argv))


def _prepare_command(args):
    out = args.out or str(Path("data") / Path(args.text).stem)
    meta = prepare(args.text, out, args.val_fraction)
    print(f"{meta['tokens']:,} tokens -> {out}/train.bin ({meta['train_tokens']:,}) and val.bin ({meta['val_tokens']:,})")


if __name__ == "__main__":
    sys.exit(main())
