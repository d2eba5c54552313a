"""Tokenizers that travel with a model: GPT-2's, one token per character, or a BPE trained on the text.

    python -m picogpt.data FILE --tokenizer gpt2      GPT-2's BPE (50,257 tokens; the default)
    python -m picogpt.data FILE --tokenizer char      one token per character of FILE (nanoGPT's shakespeare_char)
    python -m picogpt.data FILE --tokenizer bpe:N     a byte-level BPE of N tokens learned from FILE (picogpt.bpe.train_bpe)

A data folder and a model folder say which tokenizer their ids belong to in `tokenizer.json`,
a small JSON file (absent means GPT-2's, so every GPT-2 folder stays as it was):

    {"type": "gpt2"}                                   GPT-2's BPE, picogpt.tokenizer
    {"type": "char", "chars": "\\n !&',-.:;?ABC..."}    token i is the character chars[i]
    {"type": "bpe", "pattern": "...", "vocab": ["!", "\\"", ..., "Ġt", "he", "Ġthe", ...]}
        token i's bytes, written as GPT-2's encoder.json writes them (every byte a visible
        character: a space is "Ġ", a newline "Ċ"); ids 0..255 are the single bytes, and a token's
        id is its merge rank, as in GPT-2, so the list is the whole merge table. `pattern` is
        the pre-tokenisation regex (GPT-2's).

`picogpt.data` writes it beside train.bin (and meta.json's "tokenizer" names its type),
`picogpt.train` copies it into the model folder and takes the model's vocab_size from it,
and `load_model` reads it into `model.tokenizer`, which `generate`, `eval` and
`picogpt.get_tokenizer(model)` use. Neither char nor bpe tokenizers have an <|endoftext|> token.

Every tokenizer has the same small interface: encode(text) -> ids, encode_ordinary(text),
decode(ids) -> text, decode_bytes(ids), stream_decoder(), n_vocab, eot_token (None if none).
"""

import json
import sys
from pathlib import Path

from . import tokenizer as gpt2
from .bpe import BPETokenizer, show_token, train_bpe
from .errors import PicoGPTError
from .files import write_json

TOKENIZER_FILE = "tokenizer.json"
KINDS = ("gpt2", "char", "bpe")
MAX_VOCAB = 65536   # data files hold ids as uint16


class CharTokenizer:
    """One token per character: token i is chars[i]. Built from a text's distinct characters,
    sorted (as nanoGPT's shakespeare_char does), so the same text always gives the same ids."""

    def __init__(self, chars):
        self.chars = "".join(chars)
        if not self.chars or len(set(self.chars)) != len(self.chars):
            raise PicoGPTError("a character tokenizer needs at least one character, each listed once.")
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.n_vocab = len(self.chars)
        self.eot_token = None   # no end-of-text token: "<|endoftext|>" is 13 ordinary characters

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    def encode(self, text):
        """str -> list[int]; a character outside the alphabet is an error naming it."""
        try:
            return [self.index[c] for c in text]
        except KeyError as e:
            raise PicoGPTError(f"the character {e.args[0]!r} is not one of this character-level tokenizer's "
                               f"{self.n_vocab} characters (those of the text it was made from).") from None

    encode_ordinary = encode

    def decode(self, ids):
        """list[int] -> str."""
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < self.n_vocab), None)
        if bad is not None:
            raise PicoGPTError(f"cannot decode token id {bad}: this character tokenizer's ids run from 0 to "
                               f"{self.n_vocab - 1}.")
        return "".join(self.chars[i] for i in ids)

    def decode_bytes(self, ids):
        return self.decode(ids).encode("utf-8")

    def stream_decoder(self):
        """ids -> their text: every token is a whole character, so nothing is held back."""
        return self.decode

    def __len__(self):
        return self.n_vocab

    def __repr__(self):
        return f"CharTokenizer(n_vocab={self.n_vocab})"


# --- tokenizer.json ------------------------------------------------------------------------

def kind(tok):
    """'gpt2', 'char' or 'bpe': the type recorded in tokenizer.json and meta.json."""
    if isinstance(tok, CharTokenizer):
        return "char"
    return "bpe" if isinstance(tok, BPETokenizer) else "gpt2"


def describe(tok):
    """For messages: "GPT-2's BPE (50,257 tokens)", "characters (65 tokens)", "a BPE of 512 tokens"."""
    return {"gpt2": "GPT-2's BPE", "char": "characters", "bpe": "a trained BPE"}[kind(tok)] + f" ({tok.n_vocab:,} tokens)"


def to_json(tok):
    """The tokenizer.json dict of a tokenizer (see the module docstring)."""
    k = kind(tok)
    if k == "char":
        return {"type": "char", "chars": tok.chars}
    if k == "bpe":
        vocab = [show_token(tok.vocab[i]) for i in range(tok.n_vocab)]
        return {"type": "bpe", "pattern": tok.pattern, "vocab": vocab}
    return {"type": "gpt2"}


def from_json(d, where="tokenizer.json"):
    """A tokenizer from its tokenizer.json dict; a malformed one is one sentence naming `where`."""
    t = d.get("type") if isinstance(d, dict) else None
    if t == "gpt2":
        return gpt2.get_tokenizer()
    if t == "char" and isinstance(d.get("chars"), str):
        return CharTokenizer(d["chars"])
    if t == "bpe" and isinstance(d.get("vocab"), list) and isinstance(d.get("pattern", ""), str):
        byte_of = {c: b for b, c in gpt2.bytes_to_unicode().items()}
        try:
            ranks = {bytes(byte_of[c] for c in token): i for i, token in enumerate(d["vocab"])}
        except (KeyError, TypeError):
            raise PicoGPTError(f"{where}: a BPE token is not written in GPT-2's byte alphabet.") from None
        if len(ranks) != len(d["vocab"]):
            raise PicoGPTError(f"{where}: the BPE vocabulary lists a token twice.")
        return BPETokenizer(ranks, d.get("pattern") or gpt2.GPT2_PATTERN)
    raise PicoGPTError(f"{where} does not describe a tokenizer: its \"type\" must be one of {', '.join(KINDS)}, "
                       "with \"chars\" (char) or \"vocab\" (bpe).")


def read_tokenizer(folder):
    """The tokenizer of a data or model folder: its tokenizer.json, or GPT-2's when there is none."""
    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        return gpt2.get_tokenizer()
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PicoGPTError(f"{path} is not a readable JSON file ({e}).") from None
    return from_json(d, str(path))


def write_tokenizer(tok, folder):
    """Write folder/tokenizer.json; GPT-2's tokenizer writes none (absent means GPT-2), and a
    tokenizer.json left there by another model is removed so that the folder says the truth."""
    path = Path(folder) / TOKENIZER_FILE
    if tok is None or kind(tok) == "gpt2":
        path.unlink(missing_ok=True)
        return None
    write_json(path, to_json(tok))
    return path


def same(a, b):
    """True when two tokenizers give the same ids to every text."""
    return a is b or to_json(a) == to_json(b)


def get_tokenizer(model=None):
    """The tokenizer of `model`: a GPT2 (its `tokenizer`), a model folder (its tokenizer.json),
    or None / a model name (GPT-2's: the bundled and the Hub's models all use it)."""
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        return tok
    if isinstance(model, (str, Path)) and Path(model).is_dir():
        return read_tokenizer(model)
    return gpt2.get_tokenizer()


# --- making one from a text (python -m picogpt.data --tokenizer) ------------------------------

def parse_spec(spec):
    """'gpt2' | 'char' | 'bpe:N' -> (kind, N or None); anything else is one sentence."""
    name, _, n = str(spec).partition(":")
    if name in ("gpt2", "char") and not n:
        return name, None
    if name == "bpe" and n.isdigit() and 256 <= int(n) <= MAX_VOCAB:
        return name, int(n)
    raise PicoGPTError(f"unknown tokenizer {spec!r}: give gpt2, char, or bpe:N with 256 <= N <= {MAX_VOCAB:,} "
                       "(the 256 bytes plus N - 256 merges learned from the text).")


def make_tokenizer(spec, text, log=None):
    """The tokenizer `spec` names, made from `text` where it needs one; `log(str)` shows a BPE's
    training progress (one line, rewritten)."""
    name, n = parse_spec(spec)
    if name == "gpt2":
        return gpt2.get_tokenizer()
    if name == "char":
        tok = CharTokenizer.from_text(text)
        if tok.n_vocab > MAX_VOCAB:
            raise PicoGPTError(f"the text has {tok.n_vocab:,} distinct characters, more than the {MAX_VOCAB:,} ids "
                               "a data file can hold: use --tokenizer bpe:N.")
        return tok

    def progress(done, total):
        if log and (done == total or done % 50 == 0):
            log(f"\rtraining a BPE on the text: merge {done:,}/{total:,}")

    tok = train_bpe(text, n, progress=progress)
    if log:
        log("\n")
    return tok


def stderr_log(s):
    print(s, end="", file=sys.stderr, flush=True)
