"""GPT-2's byte-level BPE through tiktoken, built offline from the vendored BPE files.

`get_tokenizer()` needs no network: it reads `assets/encoder.json` and `assets/vocab.bpe`
(OpenAI's GPT-2 files, SHA-256 checked) and gives exactly `tiktoken.get_encoding("gpt2")`.

The end-of-text token: `encode(text)` turns the literal string "<|endoftext|>" into the special
token 50256 (how documents are separated in training data); `encode_ordinary(text)` treats it as
plain text (use it for untrusted input). tiktoken itself raises instead, unless told.

`picogpt.bpe` is the same algorithm written out in Python for reading.
"""

import codecs
import functools
import hashlib
import json
from pathlib import Path

from .errors import PicoGPTError

ASSETS = Path(__file__).parent / "assets"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
EOT_TOKEN = 50256
EOT_TEXT = "<|endoftext|>"
# GPT-2's pre-tokenisation pattern, as tiktoken writes it (possessive quantifiers make it fast):
# contractions, letters, digits, other symbols, each with one optional leading space; whitespace.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def bytes_to_unicode():
    """GPT-2's map from each byte to a printable character, as written in encoder.json.

    Printable Latin-1 bytes stand for themselves; the other 68 (control characters, space,
    ...) are shifted to 256, 257, ... so every token is a visible string.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _read_checked(name, sha256):
    data = (ASSETS / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise PicoGPTError(f"the vendored tokenizer file {ASSETS / name} is corrupt (SHA-256 mismatch): reinstall picogpt.")
    return data


@functools.lru_cache(maxsize=1)
def load_ranks():
    """token bytes -> id, for the 50,256 mergeable tokens (ids are also merge priorities)."""
    encoder = json.loads(_read_checked("encoder.json", ENCODER_JSON_SHA256))
    _read_checked("vocab.bpe", VOCAB_BPE_SHA256)  # the merges are implied by the ids; checked anyway
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    return {bytes(byte_of[c] for c in tok): i for tok, i in encoder.items() if tok != EOT_TEXT}


class Tokenizer:
    """encode(text) -> list[int]; decode(ids) -> str. Wraps a tiktoken Encoding."""

    def __init__(self, encoding):
        self.encoding = encoding
        self.eot_token = EOT_TOKEN
        self.n_vocab = encoding.n_vocab

    def encode(self, text):
        """Text -> ids; the literal "<|endoftext|>" becomes token 50256."""
        return self.encoding.encode(text, allowed_special={EOT_TEXT})

    def encode_ordinary(self, text):
        """Text -> ids, with "<|endoftext|>" encoded as ordinary characters."""
        return self.encoding.encode_ordinary(text)

    def decode(self, ids):
        """Ids -> text. Bytes that are not valid UTF-8 (a token can end inside a character)
        become U+FFFD, as in tiktoken."""
        return self.encoding.decode(self._checked(ids))

    def decode_bytes(self, ids):
        return self.encoding.decode_bytes(self._checked(ids))

    def _checked(self, ids):
        """ids as Python ints, each one a token of this vocabulary (tiktoken would raise KeyError)."""
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < self.n_vocab), None)
        if bad is not None:
            raise PicoGPTError(f"cannot decode token id {bad}: GPT-2's ids run from 0 to {self.n_vocab - 1}.")
        return ids

    def stream_decoder(self):
        """A function ids -> the text they complete, for printing tokens as they come.

        A character of several bytes can be split across tokens; an incremental UTF-8 decoder
        holds the partial bytes back until the character is whole.
        """
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda ids: dec.decode(self.decode_bytes(ids))

    def __len__(self):
        return self.n_vocab


@functools.lru_cache(maxsize=1)
def get_tokenizer():
    """GPT-2's tokenizer, built from the vendored files: no network, identical to tiktoken's gpt2."""
    import tiktoken

    enc = tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=load_ranks(),
        special_tokens={EOT_TEXT: EOT_TOKEN},
        explicit_n_vocab=50257,
    )
    return Tokenizer(enc)
