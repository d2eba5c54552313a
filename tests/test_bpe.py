"""picogpt.bpe: the BPE written out in Python gives tiktoken's ids; training a small BPE works."""

import random
import unicodedata
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import picogpt
from picogpt import PicoGPTError
from picogpt.bpe import (
    BPETokenizer, Merge, _merge_word, bpe_merge, format_trace, pretokenize, show_token, train_bpe,
)
from picogpt.tokenizer import EOT_TEXT, GPT2_PATTERN

# Arbitrary Unicode, plus text built from pieces that stress the pre-tokeniser and the merges
# (whitespace runs, contractions, combining marks, emoji sequences, CJK, the special token,
# noncharacters that no Unicode version will ever assign).
TRICKY_CHARS = (
    " \t\n\r\x0b\x85\xa0\u2009\u2028\u3000\u200b\u200d\u0301\u0308"
    "😀🤖👍🏽🇫🇷漢字日本한국עבר٣४１²'’.,!?-()<>|aZéßΩж"
    "\ufdd0\ufffe\uffff\U0001ffff\U0010fffe\ue000\U000f0000"
)
PIECES = [
    EOT_TEXT, "<|endoftext", "'s", "'ll", "'re", "  ", "\n\n", " \n ", "123", " hello", "e\u0301", "👨‍👩‍👧", "\r\n",
]


def text_of(characters):
    """Text from `characters`, and from the pieces above mixed with it."""
    return st.one_of(
        st.text(characters),
        st.lists(
            st.one_of(
                st.text(alphabet=st.sampled_from(TRICKY_CHARS), max_size=12),
                st.text(characters, max_size=12),
                st.sampled_from(PIECES),
            ),
            max_size=12,
        ).map("".join),
    )


# Which text gives tiktoken's ids: the promise is for characters that picogpt.bpe's `regex` and
# tiktoken's own regex engine put in the same class (letter, number, space, other), since the
# pre-tokeniser splits on those classes. Each library carries its own Unicode tables, and they
# differ for the newest characters: a check over every code point (test_which_characters_agree)
# found that the installed `regex` (Unicode 17.0) and tiktoken (16.0) disagree only on code points
# that Python's own unicodedata (Unicode 14.0 in Python 3.11) does not assign yet -- e.g.
# U+3D000 is a letter to `regex` and unassigned to tiktoken, so "\U0003d000's" splits
# differently. So the property draws characters that Python's unicodedata assigns (any category
# but Cn, unassigned, and Cs, surrogates), plus the permanent noncharacters in TRICKY_CHARS.
assigned_text = text_of(st.characters(exclude_categories=("Cs", "Cn")))
any_text = text_of(st.characters(exclude_categories=("Cs",)))   # every code point: round trips


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.gpt2()


@pytest.fixture(scope="module")
def tok():
    return picogpt.get_tokenizer()


# ---------------------------------------------------------------------------------------------
# GPT-2: the same ids as tiktoken


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=assigned_text)
def test_gpt2_equals_tiktoken(bpe, tok, text):
    """The same ids for text of characters both regex engines classify alike (see assigned_text)."""
    assert bpe.encode(text) == tok.encode(text)
    assert bpe.encode_ordinary(text) == tok.encode_ordinary(text)


def probe(c):
    """Text around the character c that splits differently if c's class (letter, number, space,
    other) differs: next to letters, digits, spaces, an apostrophe, punctuation, itself."""
    return f"{c}'s a{c} 1{c} {c}1 {c}a\n'{c}. {c}{c} \t{c}"


def test_probe_catches_a_character_of_another_class(bpe, tok):
    """The probe below is sharp: 'x' and '1' and '.' (three classes) give three different results."""
    shapes = {tuple(len(t) for t in map(bpe.decode_bytes, ([i] for i in tok.encode(probe(c))))) for c in "x1."}
    assert len(shapes) == 3


@pytest.mark.slow
def test_which_characters_agree(bpe, tok):
    """Every code point, in text that shows its class: the two libraries disagree only on code
    points unassigned in Python's unicodedata, which is what assigned_text leaves out.

    If this fails after an upgrade of `regex`, tiktoken or Python, the listed characters are new
    to one library's Unicode tables and not to the other's: narrow assigned_text and the promise
    in picogpt/bpe.py's docstring accordingly."""
    disagree = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF
                and bpe.encode_ordinary(probe(chr(cp))) != tok.encode_ordinary(probe(chr(cp)))]
    assigned = [f"U+{cp:04X} ({unicodedata.category(chr(cp))})" for cp in disagree
                if unicodedata.category(chr(cp)) != "Cn"]
    assert not assigned, f"{len(assigned)} assigned characters split differently: {assigned[:20]}"


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.integers(0, 50256), max_size=30))
def test_gpt2_decode_equals_tiktoken(bpe, tok, ids):
    assert bpe.decode(ids) == tok.decode(ids)
    assert bpe.decode_bytes(ids) == tok.decode_bytes(ids)


def test_gpt2_paragraph(bpe, tok):
    text = (
        "The quick brown fox jumps over the lazy dog. It's 2024; prices rose 3.5% (again!)\n\n"
        "    def f(x):\n        return x ** 2  # squares\n"
        "Émoji 🤖👍🏽, 漢字, עברית, e\u0301, tabs\t\tand   spaces   \n<|endoftext|>Next doc."
    ) * 20
    assert bpe.encode(text) == tok.encode(text)
    assert bpe.encode_ordinary(text) == tok.encode_ordinary(text)
    assert bpe.decode(bpe.encode(text)) == text


def test_gpt2_special_and_sizes(bpe):
    assert bpe.encode(EOT_TEXT) == [50256]
    assert bpe.encode("a" + EOT_TEXT + EOT_TEXT + "b") == [64, 50256, 50256, 65]
    assert 50256 not in bpe.encode_ordinary(EOT_TEXT)
    assert bpe.decode([50256]) == EOT_TEXT
    assert bpe.n_vocab == len(bpe) == 50257
    assert bpe.eot_token == 50256


def test_lone_surrogates(bpe, tok):
    for text in ["\ud800", "a\udfffb", "\ud83d\ude00"]:
        assert bpe.encode(text) == tok.encode(text)


def test_bad_id_is_reported(bpe):
    with pytest.raises(PicoGPTError, match="not in this tokenizer's vocabulary"):
        bpe.decode([50257])


# ---------------------------------------------------------------------------------------------
# the steps, one by one


def test_pretokenize():
    expected = ["Hello", " world", ",", " it", "'s", " 2024", "!", " ", " ok"]
    assert pretokenize("Hello world, it's 2024!  ok") == expected
    text = "a\n\n  b\t'll"
    assert "".join(pretokenize(text)) == text


def test_merge_trace_hello(bpe):
    trace = []
    parts = bpe_merge(" hello".encode(), bpe.ranks, trace)
    assert parts == [b" hello"]
    assert [bpe.ranks[p] for p in parts] == [23748] == bpe.encode(" hello")
    assert trace == [
        Merge(b"h", b"e", 258),
        Merge(b"l", b"l", 297),
        Merge(b" ", b"he", 339),
        Merge(b" he", b"ll", 5968),
        Merge(b" hell", b"o", 23748),
    ]
    lines = format_trace(trace).splitlines()
    assert lines[0] == "step 1: merge 'h' + 'e' -> 'he' (rank 258)"
    assert lines[-1] == "step 5: merge 'Ġhell' + 'o' -> 'Ġhello' (rank 23748)"


def test_merge_stops_at_unknown_pairs(bpe):
    # A 4-byte emoji: some of its byte pairs are tokens, the result is several tokens whose
    # bytes join back to the emoji.
    parts = bpe_merge("🤖".encode(), bpe.ranks)
    assert b"".join(parts) == "🤖".encode()
    assert [bpe.ranks[p] for p in parts] == bpe.encode("🤖")
    assert bpe_merge(b"", bpe.ranks) == []
    assert bpe_merge(b"x", bpe.ranks, trace := []) == [b"x"] and trace == []


def test_show_token():
    assert show_token(b" hello\n") == "ĠhelloĊ"


# ---------------------------------------------------------------------------------------------
# training

# A few KB of text made here (tests do not read ../shared): an embedded passage plus generated
# sentences from a small vocabulary with Zipf-like word frequencies.
PASSAGE = """\
To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles
And by opposing end them. To die: to sleep;
No more; and by a sleep to say we end
The heart-ache and the thousand natural shocks
That flesh is heir to, 'tis a consummation
Devoutly to be wish'd. To die, to sleep;
To sleep: perchance to dream: ay, there's the rub;
"""
WORDS = ("the and of to a in that is it with for as his he be not by this but you all so her "
         "king lord love night sleep dream heart sea fortune question arrows troubles").split()


def make_corpus(n_sentences=150, seed=0):
    rng = random.Random(seed)
    weights = [1 / (r + 1) for r in range(len(WORDS))]
    sentences = []
    for _ in range(n_sentences):
        words = rng.choices(WORDS, weights, k=rng.randint(4, 12))
        sentences.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ",", ";"]))
    return PASSAGE * 3 + "\n".join(sentences) + "\n"


CORPUS = make_corpus()
VOCAB_SIZE = 256 + 200


@pytest.fixture(scope="module")
def trained():
    return train_bpe(CORPUS, VOCAB_SIZE)


def naive_train_ranks(text, vocab_size, pattern=GPT2_PATTERN):
    """The textbook algorithm, recounting every pair after every merge; the reference."""
    ranks = {bytes([b]): b for b in range(256)}
    words = Counter(tuple(bytes([b]) for b in w.encode()) for w in pretokenize(text, pattern))
    while len(ranks) < vocab_size:
        stats = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                stats[pair] += count
        if not stats:
            break
        pair = min(stats, key=lambda p: (-stats[p], p))  # most frequent, then smallest
        new = pair[0] + pair[1]
        if new not in ranks:
            ranks[new] = len(ranks)
        merged = Counter()
        for word, count in words.items():
            merged[_merge_word(word, pair, new)] += count
        words = merged
    return ranks


def test_corpus_is_a_few_kb():
    assert 4_000 < len(CORPUS.encode()) < 20_000


def test_trained_vocab_size(trained):
    assert len(trained.ranks) == VOCAB_SIZE
    assert trained.n_vocab == len(trained) == VOCAB_SIZE
    assert sorted(trained.ranks.values()) == list(range(VOCAB_SIZE))  # ids are 0..V-1, no gaps
    assert all(trained.ranks[bytes([b])] == b for b in range(256))  # ids 0..255 are the bytes
    assert trained.special_tokens == {}


def test_training_is_deterministic(trained):
    again = train_bpe(CORPUS, VOCAB_SIZE)
    assert again.ranks == trained.ranks
    assert list(again.ranks) == list(trained.ranks)  # same order of learning too


def test_training_equals_naive_recount(trained):
    """The incremental bookkeeping (heap, per-word updates) learns exactly the textbook merges."""
    assert naive_train_ranks(CORPUS, VOCAB_SIZE) == trained.ranks


def test_frequent_words_become_single_tokens(trained):
    counts = Counter(pretokenize(CORPUS))
    for word, _ in counts.most_common(8):
        assert len(trained.encode(word)) == 1, word
    for word in [" the", " to", " and", " sleep"]:
        assert len(trained.encode(word)) == 1, word
    # and the tokenizer compresses its own training text well below one token per byte
    assert len(trained.encode(CORPUS)) < 0.5 * len(CORPUS.encode())


@settings(max_examples=200, deadline=None)
@given(text=any_text)
def test_trained_round_trip(trained, text):
    assert trained.decode(trained.encode(text)) == text
    assert trained.encode(text) == trained.encode_ordinary(text)  # no special tokens


def test_training_stops_when_pairs_run_out():
    small = train_bpe("aaaa aaaa", 1000)
    assert 256 < len(small.ranks) < 1000
    assert small.encode("aaaa aaaa") == [small.ranks[b"aaaa"], small.ranks[b" aaaa"]]
    assert len(train_bpe("", 300).ranks) == 256


def test_training_same_bytes_from_two_pairs():
    # "ab"+"c" and "a"+"bc" can both spell b"abc": one token, no duplicate ids, still round-trips.
    text = "ab abc abc abc bc bc bc bc xabc " * 5
    t = train_bpe(text, 300)
    assert sorted(t.ranks.values()) == list(range(len(t.ranks)))
    assert t.decode(t.encode(text)) == text


def test_training_verbose(capsys):
    train_bpe(CORPUS, 256 + 3, verbose=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("merge 1/3: ")


def test_training_rejects_tiny_vocab():
    with pytest.raises(PicoGPTError, match="at least 256"):
        train_bpe(CORPUS, 100)


def test_missing_bytes_rejected():
    with pytest.raises(PicoGPTError, match="all 256 single bytes"):
        BPETokenizer({b"a": 0})
