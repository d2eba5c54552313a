"""GPT-2's byte-level BPE, written out in plain Python so every step can be read.

Byte-pair encoding (BPE) turns text into integer ids. GPT-2 works on the text's UTF-8 *bytes*,
not its characters: the vocabulary starts with all 256 possible bytes, so any string at all --
Chinese, emoji, a stray control character -- can be encoded, and there is never an "unknown"
token. Training learns a list of merges: "the byte strings b'h' and b'e' often stand next to
each other, so make b'he' a token". Each merge adds one token, and its position in the list
(its *rank*) says how early it was learned. Encoding replays the merges: split the text into
pre-tokens with a regular expression (words with their leading space, numbers, punctuation
runs, whitespace), cut each pre-token into single bytes, then keep merging the adjacent pair
whose merged token has the lowest rank until no adjacent pair is in the vocabulary. The
remaining byte strings are looked up as ids. In GPT-2 a token's id *is* its merge rank, so one
dict `ranks: bytes -> int` serves as both the merge table and the vocabulary.

    from picogpt.bpe import BPETokenizer, bpe_merge, format_trace, train_bpe
    tok = BPETokenizer.gpt2()                  # equals picogpt.get_tokenizer() / tiktoken's gpt2
    tok.encode("hello world")                  # [31373, 995]
    trace = []
    bpe_merge(" hello".encode(), tok.ranks, trace)
    print(format_trace(trace))                 # the merges one by one
    small = train_bpe(open("some.txt").read(), vocab_size=512)   # learn your own

`picogpt.tokenizer` is the fast path (tiktoken, in Rust); this module gives the same ids and is
for reading, tracing and training small vocabularies.

"The same ids" holds for text whose characters both regular-expression engines classify alike
(letter, number, space or other): the pre-tokeniser here runs on the `regex` package, tiktoken on
its own Rust engine, and each carries its own Unicode tables. For the newest characters the two
can differ: with regex 2026.11 (Unicode 17.0) and tiktoken 0.14 (Unicode 16.0), U+3D000 is a
letter to one and unassigned to the other, so "\U0003d000's" splits in two places. A check over
every code point (tests/test_bpe.py::test_which_characters_agree) finds them agreeing on every
character that Python's own `unicodedata` assigns; the tests promise equality for those.
"""

import codecs
import heapq
from collections import Counter, defaultdict
from typing import NamedTuple

import regex

from .errors import PicoGPTError
from .tokenizer import EOT_TEXT, EOT_TOKEN, GPT2_PATTERN, bytes_to_unicode, load_ranks

__all__ = ["BPETokenizer", "Merge", "bpe_merge", "format_trace", "pretokenize", "show_token", "train_bpe"]


# ---------------------------------------------------------------------------------------------
# (a) pre-tokenisation


def pretokenize(text, pattern=GPT2_PATTERN):
    """Split text into pre-tokens: str -> list[str], which concatenate back to `text`.

    Merges are applied inside each pre-token only, never across two. That is why " dog." becomes
    " dog" + "." and not " do" + "g.": without the split, BPE would learn a separate token for
    every word-plus-punctuation combination ("dog.", "dog!", "dog?") and waste the vocabulary.
    GPT-2's pattern keeps one leading space with a word (" world"), so the same word at the start
    of a sentence and in the middle are usually two tokens ("Hello" vs " Hello").
    """
    return regex.findall(pattern, text)


# ---------------------------------------------------------------------------------------------
# (b)+(c) bytes, then merges


class Merge(NamedTuple):
    """One step of bpe_merge: `left + right` became one token of rank `rank`."""

    left: bytes
    right: bytes
    rank: int


def bpe_merge(token_bytes, ranks, trace=None):
    """Merge the bytes of one pre-token into tokens: bytes -> list[bytes].

    token_bytes: the UTF-8 bytes of one pre-token, e.g. b" hello".
    ranks: dict bytes -> int, the merge rank of each token (lower = learned earlier = merged first).
    trace: optional list; each merge is appended to it as a `Merge(left, right, rank)`.

    Start from single bytes. At every step look at all adjacent pairs, and merge the pair whose
    concatenation has the lowest rank (the leftmost one on a tie). Stop when no adjacent pair
    forms a known token. This is exactly tiktoken's algorithm (and so GPT-2's).
    """
    parts = [bytes([b]) for b in token_bytes]  # (b) one part per byte: b"hi" -> [b"h", b"i"]
    while len(parts) > 1:
        best_i, best_rank = None, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best_i, best_rank = i, rank
        if best_i is None:  # no adjacent pair is a token: done
            break
        if trace is not None:
            trace.append(Merge(parts[best_i], parts[best_i + 1], best_rank))
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


_PRINTABLE = bytes_to_unicode()


def show_token(token):
    """bytes -> str: a token as GPT-2's encoder.json writes it, every byte a visible character
    (a space shows as 'Ġ', a newline as 'Ċ'), so partial UTF-8 characters can be printed too."""
    return "".join(_PRINTABLE[b] for b in token)


def format_trace(trace):
    """list[Merge] -> str, one line per merge: "step 1: merge 'h' + 'e' -> 'he' (rank 258)"."""
    return "\n".join(
        f"step {n}: merge {show_token(m.left)!r} + {show_token(m.right)!r} -> "
        f"{show_token(m.left + m.right)!r} (rank {m.rank})"
        for n, m in enumerate(trace, 1)
    )


# ---------------------------------------------------------------------------------------------
# (d) the tokenizer: pre-tokens -> merges -> ids, and back


class BPETokenizer:
    """Byte-level BPE: encode(text) -> list[int]; decode(ids) -> str.

    ranks: dict bytes -> int. Every token's bytes and its id, which is also its merge rank.
        Must contain all 256 single bytes, so that any text can be encoded.
    pattern: the pre-tokenisation regex (GPT2_PATTERN by default).
    special_tokens: dict str -> int, e.g. {"<|endoftext|>": 50256}; never produced by merging.
    """

    # Pre-tokens repeat a lot (" the", " and", ","): remember their ids. The cache is emptied when
    # it gets this big, so encoding a huge, varied text cannot eat all memory.
    CACHE_SIZE = 100_000

    def __init__(self, ranks, pattern=GPT2_PATTERN, special_tokens=None):
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise PicoGPTError(
                f"a byte-level BPE vocabulary needs all 256 single bytes; {len(missing)} are missing."
            )
        self.ranks = dict(ranks)
        self.pattern = pattern
        self.special_tokens = dict(special_tokens or {})
        self.vocab = {i: b for b, i in self.ranks.items()}  # id -> bytes, for decoding
        for text, i in self.special_tokens.items():
            self.vocab[i] = text.encode("utf-8")
        self.n_vocab = max(self.vocab) + 1
        self.eot_token = self.special_tokens.get(EOT_TEXT)
        self._regex = regex.compile(pattern)
        # One alternation of the special strings, longest first, to find them in the text.
        specials = sorted(self.special_tokens, key=len, reverse=True)
        self._special_regex = regex.compile("|".join(map(regex.escape, specials))) if specials else None
        self._cache = {}

    @classmethod
    def gpt2(cls):
        """GPT-2's tokenizer from the vendored encoder.json (checked by SHA-256): no network."""
        return cls(load_ranks(), GPT2_PATTERN, {EOT_TEXT: EOT_TOKEN})

    # -- encoding

    def _encode_pretoken(self, piece):
        """One pre-token (str) -> list[int], through the cache."""
        ids = self._cache.get(piece)
        if ids is None:
            token_bytes = piece.encode("utf-8")
            if token_bytes in self.ranks:
                # A pre-token that is itself a token (" the", " hello") is emitted whole, as in
                # tiktoken; for GPT-2's vocabulary this is what the merges give anyway.
                ids = [self.ranks[token_bytes]]
            else:
                ids = [self.ranks[part] for part in bpe_merge(token_bytes, self.ranks)]
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.clear()
            self._cache[piece] = ids
        return ids

    def encode_ordinary(self, text):
        """str -> list[int]. Special-token strings such as "<|endoftext|>" are plain text here."""
        text = _fix_surrogates(text)
        ids = []
        for piece in self._regex.findall(text):  # (a) pre-tokens; (b)-(d) in _encode_pretoken
            ids.extend(self._encode_pretoken(piece))
        return ids

    def encode(self, text):
        """str -> list[int]. The literal "<|endoftext|>" becomes the special token 50256 (the
        document separator), as in picogpt.tokenizer.Tokenizer.encode; the text between special
        tokens is encoded with encode_ordinary."""
        if self._special_regex is None:
            return self.encode_ordinary(text)
        text = _fix_surrogates(text)
        ids, start = [], 0
        for m in self._special_regex.finditer(text):
            ids.extend(self.encode_ordinary(text[start : m.start()]))
            ids.append(self.special_tokens[m.group()])
            start = m.end()
        ids.extend(self.encode_ordinary(text[start:]))
        return ids

    # -- decoding

    def decode_bytes(self, ids):
        """list[int] -> bytes: the tokens' bytes, concatenated."""
        try:
            return b"".join(self.vocab[int(i)] for i in ids)
        except KeyError as e:
            msg = f"token id {e.args[0]} is not in this tokenizer's vocabulary of {self.n_vocab}."
            raise PicoGPTError(msg) from None

    def decode(self, ids):
        """list[int] -> str. A token can end in the middle of a multi-byte character; bytes that
        are not valid UTF-8 become U+FFFD, as in tiktoken."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self):
        """A function ids -> the text they complete, for printing tokens as they come: an
        incremental UTF-8 decoder holds back the bytes of a character split across tokens."""
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda ids: dec.decode(self.decode_bytes(ids))

    def __len__(self):
        return self.n_vocab

    def __repr__(self):
        return f"BPETokenizer(n_vocab={self.n_vocab}, merges={len(self.ranks) - 256})"


def _fix_surrogates(text):
    """Lone surrogates (e.g. '\\ud800') cannot be UTF-8 encoded; tiktoken replaces them by U+FFFD
    (and joins valid surrogate pairs into one character). Do the same, so the ids stay equal."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


# ---------------------------------------------------------------------------------------------
# training


def _pairs(word):
    """tuple[bytes, ...] -> the adjacent pairs in it, with repeats: (a, b, a, b) -> 3 pairs."""
    return zip(word, word[1:])


def _merge_word(word, pair, new):
    """Replace every (non-overlapping, left to right) occurrence of `pair` in `word` by `new`."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def train_bpe(text, vocab_size, pattern=GPT2_PATTERN, verbose=False, progress=None):
    """Learn a byte-level BPE from `text`: str -> BPETokenizer with `vocab_size` tokens.

    Start from the 256 single bytes (ids 0..255 are the byte values). Repeat: count every
    adjacent pair of tokens inside every pre-token, take the most frequent pair (ties: the
    lexicographically smallest pair of byte strings, so training is deterministic), make it a new
    token with the next id, and merge it everywhere. Stops early, with a smaller vocabulary, if
    the text runs out of pairs. Special tokens are not added.

    Speed: the text is reduced to its unique pre-tokens with their counts (" the" appears
    thousands of times but is counted once, weighted). After a merge only the pre-tokens that
    contain the merged pair change, so only their pair counts are updated; a heap finds the most
    frequent pair without scanning all of them. Recounting everything each step gives the same
    merges, just more slowly.

    verbose prints every merge; progress, a function (merges done, merges wanted), is called
    after each one (picogpt.data's progress line).
    """
    if vocab_size < 256:
        raise PicoGPTError(f"vocab_size must be at least 256 (the single bytes), got {vocab_size}.")
    ranks = {bytes([b]): b for b in range(256)}

    # Each unique pre-token as a tuple of byte strings (one per byte to start), with its count.
    word_counts = Counter(pretokenize(text, pattern))
    words = [tuple(bytes([b]) for b in w.encode("utf-8")) for w in word_counts]
    freqs = list(word_counts.values())

    # stats[pair]: how often the pair occurs, over the whole text. where[pair]: which words have it.
    stats = Counter()
    where = defaultdict(set)
    for i, (word, f) in enumerate(zip(words, freqs)):
        for pair in _pairs(word):
            stats[pair] += f
            where[pair].add(i)

    # Max-heap by count (heapq is a min-heap: store -count); on equal counts the smaller pair
    # comes out first. Entries go stale when counts change: a popped entry whose count no longer
    # matches stats is simply dropped (the up-to-date entry was pushed when the count changed).
    heap = [(-c, pair) for pair, c in stats.items()]
    heapq.heapify(heap)

    while len(ranks) < vocab_size and heap:
        neg_count, pair = heapq.heappop(heap)
        if stats.get(pair, 0) != -neg_count:
            continue  # stale entry
        new = pair[0] + pair[1]
        if new not in ranks:  # two different pairs can spell the same bytes: one token for both
            ranks[new] = len(ranks)
            if verbose:
                print(f"merge {len(ranks) - 256}/{vocab_size - 256}: {show_token(pair[0])!r} + "
                      f"{show_token(pair[1])!r} -> {show_token(new)!r} (count {-neg_count})")
            if progress:
                progress(len(ranks) - 256, vocab_size - 256)

        # Merge the pair in every word that has it, updating the pair counts of those words only.
        changed = set()
        for i in where.pop(pair):
            old_word = words[i]
            new_word = _merge_word(old_word, pair, new)
            if new_word == old_word:  # `where` can list words that no longer have the pair
                continue
            words[i] = new_word
            for p in _pairs(old_word):
                stats[p] -= freqs[i]
                changed.add(p)
            for p in _pairs(new_word):
                stats[p] += freqs[i]
                where[p].add(i)
                changed.add(p)
        stats.pop(pair, None)
        for p in changed:
            if stats.get(p, 0) > 0:
                heapq.heappush(heap, (-stats[p], p))
            else:
                stats.pop(p, None)

    return BPETokenizer(ranks, pattern)
