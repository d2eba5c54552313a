"""picogpt.get_tokenizer() is exactly tiktoken's gpt2, built offline from the vendored files.

The reference is built the way `tiktoken.get_encoding("gpt2")` builds it (tiktoken_ext.openai_public
.gpt2), but reading the vendored asset files instead of downloading from openaipublic, since tests
never touch the network. When tiktoken's own gpt2 can be loaded from its local cache, it is
compared too.
"""

import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
import tiktoken
import tiktoken.load
import tiktoken_ext.openai_public as openai_public
from helpers import subprocess_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import picogpt
import picogpt.tokenizer as tokenizer_mod
from picogpt import PicoGPTError
from picogpt.tokenizer import ASSETS, ENCODER_JSON_SHA256, EOT_TEXT, EOT_TOKEN, VOCAB_BPE_SHA256


# ---------------------------------------------------------------------------------------------
# text strategies


# Characters that stress pre-tokenisation and byte-level merging: whitespace of every kind
# (runs of it are split specially), combining marks, emoji (4 bytes, ZWJ sequences, skin tones,
# flags), CJK, RTL scripts, digits of other scripts, apostrophes for the contractions.
TRICKY_CHARS = (
    " \t\n\r\x0b\x0c\x85\xa0\u1680\u2000\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
    "\u200b\u200c\u200d\ufeff"
    "\u0301\u0308\u0327\u20dd\u0903\u093f"
    "😀🤖👍🏽👨‍👩‍👧🇫🇷❤️\U0001f9d1\U0001faf6"
    "漢字日本語中文한국어ひらがなカタカナ"
    "עבריתالعربية"
    "٣४௫１²½ⅫⅣ"
    "'’\"`.,;:!?-—()[]{}<>|/\\@#$%^&*_+=~"
    "aZéßøΩжЖ"
)
EXTRA_PIECES = [
    EOT_TEXT, "<|endoftext", "|>", "<|", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S",
    "  ", "   ", "\n\n", " \n ", "\t\t", "123", "  12", " hello", "Hello", " world", "e\u0301",
    "👨‍👩‍👧", "🇫🇷", " 🤖", "\r\n", "http://x.y/z?q=1", "    def f(x):\n        return x\n",
]
tricky_text = st.lists(
    st.one_of(
        st.text(alphabet=st.sampled_from(TRICKY_CHARS), max_size=12),
        st.text(max_size=12),  # any Unicode (all planes, no surrogates)
        st.sampled_from(EXTRA_PIECES),
    ),
    max_size=12,
).map("".join)
any_text = st.one_of(st.text(), tricky_text)


# ---------------------------------------------------------------------------------------------
# reference encodings


@pytest.fixture(scope="module")
def tok():
    return picogpt.get_tokenizer()


def _offline_gpt2_params():
    """What tiktoken_ext.openai_public.gpt2() returns, with the vendored files instead of URLs."""
    with pytest.MonkeyPatch.context() as mp:
        # TIKTOKEN_CACHE_DIR="" turns tiktoken's file cache off: read the files, copy nothing to /tmp.
        mp.setenv("TIKTOKEN_CACHE_DIR", "")
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(ASSETS / "vocab.bpe"),
            encoder_json_file=str(ASSETS / "encoder.json"),
            vocab_bpe_hash=VOCAB_BPE_SHA256,
            encoder_json_hash=ENCODER_JSON_SHA256,
        )
    return {
        "name": "gpt2-reference",
        "explicit_n_vocab": 50257,
        "pat_str": openai_public.r50k_pat_str,
        "mergeable_ranks": ranks,
        "special_tokens": {openai_public.ENDOFTEXT: 50256},
    }


@pytest.fixture(scope="module")
def ref():
    return tiktoken.Encoding(**_offline_gpt2_params())


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    """tiktoken.get_encoding("gpt2") itself, if it loads without the network (from tiktoken's
    cache). Set PICOGPT_TEST_NETWORK=1 to let it download; tests are otherwise offline."""
    allow_network = os.environ.get("PICOGPT_TEST_NETWORK") == "1"
    with pytest.MonkeyPatch.context() as mp:
        if not allow_network:
            _block_network(mp)
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:  # noqa: BLE001 - whatever the reason, this extra check is skipped
            why = ("the download failed" if allow_network else
                   "its files are not in tiktoken's cache and tests do not download; "
                   "set PICOGPT_TEST_NETWORK=1 to allow it")
            pytest.skip(f"tiktoken.get_encoding('gpt2') cannot load here ({why}): {type(e).__name__}: {str(e)[:100]}")


def _refuse(*args, **kwargs):
    raise OSError("network access is blocked in this test")


def _block_network(mp):
    mp.setattr(socket.socket, "connect", _refuse)
    mp.setattr(socket.socket, "connect_ex", _refuse)
    mp.setattr(socket, "create_connection", _refuse)
    mp.setattr(socket, "getaddrinfo", _refuse)


def test_reference_is_what_tiktoken_builds():
    """The offline reference really is tiktoken's gpt2 recipe, and our pattern is tiktoken's."""
    assert tokenizer_mod.GPT2_PATTERN == openai_public.r50k_pat_str
    params = _offline_gpt2_params()
    assert params["mergeable_ranks"] == tokenizer_mod.load_ranks()
    assert len(params["mergeable_ranks"]) == 50256


# ---------------------------------------------------------------------------------------------
# equality with tiktoken


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=any_text)
def test_equals_tiktoken(tok, ref, text):
    assert tok.encode_ordinary(text) == ref.encode_ordinary(text)
    assert tok.encode(text) == ref.encode(text, allowed_special={EOT_TEXT})


@settings(max_examples=300, deadline=None)
@given(text=any_text)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode_ordinary(text)) == text


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.integers(0, 50256), max_size=30))
def test_decode_equals_tiktoken(tok, ref, ids):
    """Any ids, including ones that end inside a UTF-8 character (-> U+FFFD, like tiktoken)."""
    assert tok.decode(ids) == ref.decode(ids)
    assert tok.decode_bytes(ids) == ref.decode_bytes(ids)


@settings(max_examples=100, deadline=None)
@given(text=any_text)
def test_equals_tiktoken_get_encoding(tok, tiktoken_gpt2, text):
    assert tok.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)
    assert tok.encode(text) == tiktoken_gpt2.encode(text, allowed_special={EOT_TEXT})


def test_known_ids(tok):
    assert tok.encode("hello world") == [31373, 995]
    assert tok.encode(" hello") == [23748]
    assert tok.decode([31373, 995]) == "hello world"


def test_endoftext(tok, ref):
    assert EOT_TOKEN == 50256
    assert tok.eot_token == 50256
    assert tok.encode(EOT_TEXT) == [50256]
    assert tok.encode("a" + EOT_TEXT + "b") == [64, 50256, 65]
    # encode_ordinary treats it as text: several ordinary tokens, never 50256.
    ordinary = tok.encode_ordinary(EOT_TEXT)
    assert 50256 not in ordinary and len(ordinary) > 1
    assert ordinary == ref.encode_ordinary(EOT_TEXT)
    assert tok.decode([50256]) == EOT_TEXT


def test_vocab_size(tok):
    assert tok.n_vocab == 50257
    assert len(tok) == 50257


def test_lone_surrogates_like_tiktoken(tok, ref):
    for text in ["\ud800", "a\udfffb", "\ud83d\ude00"]:  # lone, lone, a valid pair (= 😀)
        assert tok.encode(text) == ref.encode(text, allowed_special={EOT_TEXT})


# ---------------------------------------------------------------------------------------------
# stream_decoder


def test_stream_decoder_multibyte(tok):
    text = "Robots 🤖 say héllo 👨‍👩‍👧 漢字 ok"
    ids = tok.encode(text)
    # The test means something only if some tokens end inside a character:
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    dec = tok.stream_decoder()
    pieces = [dec([i]) for i in ids]
    assert "".join(pieces) == tok.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)  # partial characters were held back, not mangled


@settings(max_examples=100, deadline=None)
@given(text=any_text)
def test_stream_decoder_equals_decode(tok, text):
    ids = tok.encode(text)
    dec = tok.stream_decoder()
    assert "".join(dec([i]) for i in ids) == tok.decode(ids)


# ---------------------------------------------------------------------------------------------
# offline, and corrupt assets


NO_NETWORK_SCRIPT = textwrap.dedent(
    """
    import os, socket

    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse

    import picogpt
    from picogpt.bpe import BPETokenizer

    tok = picogpt.get_tokenizer()
    assert tok.encode("hello world") == [31373, 995], tok.encode("hello world")
    assert tok.encode("<|endoftext|>") == [50256]
    assert BPETokenizer.gpt2().encode("hello world") == [31373, 995]
    assert os.listdir(os.environ["TIKTOKEN_CACHE_DIR"]) == [], "tiktoken wrote to its cache"
    print("OK")
    """
)


def test_no_network_access(tmp_path):
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    env = subprocess_env(TIKTOKEN_CACHE_DIR=str(cache))
    env.pop("DATA_GYM_CACHE_DIR", None)
    result = subprocess.run(
        [sys.executable, "-c", NO_NETWORK_SCRIPT], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"


@pytest.fixture
def fresh_caches():
    """Clear the tokenizer's lru_caches before and after, so no corrupt state leaks out."""
    tokenizer_mod.load_ranks.cache_clear()
    tokenizer_mod.get_tokenizer.cache_clear()
    yield
    tokenizer_mod.load_ranks.cache_clear()
    tokenizer_mod.get_tokenizer.cache_clear()


@pytest.mark.parametrize("name", ["encoder.json", "vocab.bpe"])
def test_corrupt_asset_is_reported(tmp_path, monkeypatch, fresh_caches, name):
    assets = tmp_path / "assets"
    shutil.copytree(ASSETS, assets)
    data = bytearray((assets / name).read_bytes())
    data[len(data) // 2] ^= 0x01  # one changed bit in the middle of the file
    (assets / name).write_bytes(bytes(data))
    monkeypatch.setattr(tokenizer_mod, "ASSETS", assets)
    with pytest.raises(PicoGPTError, match=r"corrupt .*SHA-256"):
        tokenizer_mod.get_tokenizer()
    # and with the real files it works again
    monkeypatch.setattr(tokenizer_mod, "ASSETS", ASSETS)
    tokenizer_mod.load_ranks.cache_clear()
    assert tokenizer_mod.get_tokenizer().encode("hello world") == [31373, 995]
