"""Tokenizers that travel with a model (picogpt.tokenizers): char and BPE tokenizers made from a
text, written to tokenizer.json by `python -m picogpt.data --tokenizer`, carried into the model
folder by `train`, and used by `generate`, `eval` and `picogpt.get_tokenizer(model)`.

The commands run in this process (their `main`, as a shell would call it) to keep the file fast;
their messages are checked with helpers.assert_clean_error.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import picogpt
from helpers import assert_clean_error, quiet, write_text
from picogpt import chat as C
from picogpt import data as D
from picogpt import eval as E
from picogpt import generate as G
from picogpt import train as T
from picogpt import tokenizers as TK
from picogpt.bpe import BPETokenizer, train_bpe
from picogpt.config import GPT2Config

CORPUS = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
          "Caf\u00e9 na\u00efve \u2014 \u00bfqu\u00e9? 1234 \U0001f600\n") * 20


def run(main, capsys, *args):
    """A command's main(args) in this process: (exit status, stdout, stderr), like a child's."""
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return SimpleNamespace(returncode=status, stdout=out, stderr=err)


# --- the tokenizers themselves ----------------------------------------------------------------

@given(alphabet=st.text(min_size=1, max_size=40), data=st.data())
def test_char_tokenizer_round_trips_any_text_of_its_alphabet(alphabet, data):
    tok = TK.CharTokenizer.from_text(alphabet)
    text = data.draw(st.text(alphabet=st.sampled_from(sorted(set(alphabet))), max_size=60))
    ids = tok.encode(text)
    assert len(ids) == len(text) and all(0 <= i < tok.n_vocab for i in ids)
    assert tok.decode(ids) == text
    again = TK.from_json(json.loads(json.dumps(TK.to_json(tok))))   # through tokenizer.json
    assert again.encode(text) == ids and again.decode(ids) == text


def test_char_tokenizer_ids_are_the_sorted_characters():
    tok = TK.CharTokenizer.from_text("hello world")
    assert tok.chars == " dehlorw" and tok.encode("low") == [4, 5, 7]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(CORPUS, 300)


@given(text=st.text(max_size=60))
def test_bpe_tokenizer_round_trips_any_text(bpe, text):
    """Byte-level: every string's alphabet is the 256 bytes, so any text round-trips, before and
    after tokenizer.json, with the same ids."""
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    again = TK.from_json(json.loads(json.dumps(TK.to_json(bpe))))
    assert isinstance(again, BPETokenizer) and again.encode(text) == ids and again.decode(ids) == text


def test_bpe_json_is_the_vocabulary_in_id_order(bpe):
    d = TK.to_json(bpe)
    assert d["type"] == "bpe" and len(d["vocab"]) == bpe.n_vocab == 300
    assert d["vocab"][ord("a")] == "a" and d["vocab"][ord(" ")] == "Ġ"   # GPT-2's encoder.json alphabet
    assert bpe.encode(" speak") != list(b" speak")                         # merges were learned and kept


def test_a_character_outside_the_alphabet_is_one_sentence():
    with pytest.raises(picogpt.PicoGPTError, match="'z' is not one of this character-level tokenizer's 3"):
        TK.CharTokenizer.from_text("abc").encode("abz")
    with pytest.raises(picogpt.PicoGPTError, match="ids run from 0 to 2"):
        TK.CharTokenizer.from_text("abc").decode([3])


@pytest.mark.parametrize("spec", ["bpe", "bpe:100", "bpe:x", "chars", "gpt2:5", "bpe:70000"])
def test_an_unknown_tokenizer_spec_is_one_sentence(spec):
    with pytest.raises(picogpt.PicoGPTError, match="unknown tokenizer"):
        TK.parse_spec(spec)


@pytest.mark.parametrize("bad", [{}, {"type": "char"}, {"type": "bpe", "vocab": ["\x00"]}, [1]])
def test_a_malformed_tokenizer_json_is_one_sentence(bad):
    with pytest.raises(picogpt.PicoGPTError, match="tokenizer"):
        TK.from_json(bad)


# --- data folders -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "play.txt"
    path.write_text(CORPUS)
    return path


def test_data_char_records_its_tokenizer(corpus, tmp_path, capsys):
    r = run(D.main, capsys, corpus, "--tokenizer", "char", "--out", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    tok = TK.read_tokenizer(tmp_path / "d")
    assert meta["tokenizer"] == "char" and meta["vocab_size"] == tok.n_vocab == len(set(CORPUS))
    ids = np.concatenate([D.load_split(tmp_path / "d", s) for s in ("train", "val")])
    assert tok.decode(ids) == CORPUS
    assert D.data_tokenizer(tmp_path / "d").chars == tok.chars


def test_data_bpe_trains_on_the_text_and_shows_progress(corpus, tmp_path, capsys):
    r = run(D.main, capsys, corpus, "--tokenizer", "bpe:280", "--out", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    assert "merge 24/24" in r.stderr                               # the progress line
    tok = TK.read_tokenizer(tmp_path / "d")
    assert TK.same(tok, train_bpe(CORPUS, 280)) and tok.n_vocab == 280
    ids = np.concatenate([D.load_split(tmp_path / "d", s) for s in ("train", "val")])
    assert ids.max() < 280 and tok.decode(ids) == CORPUS
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["tokenizer"] == "bpe"


def test_data_gpt2_is_as_before(corpus, tmp_path, capsys):
    r = run(D.main, capsys, corpus, "--out", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "d" / "tokenizer.json").exists()            # absent = GPT-2's
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["tokenizer"] == "gpt2"
    ids = D.load_split(tmp_path / "d", "train")
    assert list(ids[:5]) == picogpt.get_tokenizer().encode(CORPUS)[:5]


def test_a_folder_whose_meta_and_tokenizer_disagree_is_one_sentence(corpus, tmp_path, capsys):
    assert run(D.main, capsys, corpus, "--tokenizer", "char", "--out", tmp_path / "d").returncode == 0
    (tmp_path / "d" / "tokenizer.json").unlink()
    with pytest.raises(picogpt.PicoGPTError, match="says the ids are char tokens"):
        D.data_tokenizer(tmp_path / "d")


# --- a model folder's tokenizer is used by every command ---------------------------------------

@pytest.fixture(scope="module")
def char_run(corpus, tmp_path_factory):
    """A data folder (char) and a 2-step model trained on it by `python -m picogpt.train`."""
    root = tmp_path_factory.mktemp("char-run")
    D.prepare(corpus, root / "data", tokenizer="char")
    T.train(data=str(root / "data"), out=str(root / "out"), n_layer=1, n_head=2, n_embd=16, block_size=16,
            batch_size=2, steps=2, eval_interval=2, eval_batches=1, log=quiet)
    return SimpleNamespace(data=root / "data", model=root / "out")


def test_train_takes_the_vocabulary_from_the_data_and_saves_the_tokenizer(char_run):
    cfg = json.loads((char_run.model / "config.json").read_text())
    assert cfg["vocab_size"] == len(set(CORPUS))
    assert json.loads((char_run.model / "tokenizer.json").read_text()) == \
        json.loads((char_run.data / "tokenizer.json").read_text())


def test_get_tokenizer_of_a_model_and_of_its_folder(char_run):
    model = picogpt.load_model(char_run.model)
    for tok in (picogpt.get_tokenizer(model), picogpt.get_tokenizer(char_run.model),
                picogpt.get_tokenizer(model.to(dtype="float64"))):
        assert isinstance(tok, TK.CharTokenizer) and tok.chars == "".join(sorted(set(CORPUS)))
    assert picogpt.get_tokenizer().n_vocab == picogpt.get_tokenizer(picogpt.init_model("gpt2-micro")).n_vocab == 50257


def test_generate_uses_the_models_tokenizer(char_run, capsys):
    r = run(G.main, capsys, "All:", "--model", char_run.model, "--max-new-tokens", 12, "--seed", 0)
    assert r.returncode == 0, r.stderr
    tok = TK.read_tokenizer(char_run.model)
    model = picogpt.load_model(char_run.model)
    expected = tok.decode(model.generate([tok.encode("All:")], 12, temperature=0.8, top_k=200, seed=0)[0])
    assert r.stdout == expected + "\n"
    r = run(G.main, capsys, "All: x", "--model", char_run.model, "--max-new-tokens", 2)   # 'x' is not in the text
    assert_clean_error(r, "'x' is not one of this character-level tokenizer's", alone=True)


def test_eval_uses_the_models_tokenizer(char_run, corpus, capsys):
    r = run(E.main, capsys, "--model", char_run.model, "--text", corpus, "--context", 16, "--stride", 16)
    assert r.returncode == 0, r.stderr
    model = picogpt.load_model(char_run.model)
    loss, n, _, _ = E.evaluate_ids(model, TK.read_tokenizer(char_run.model).encode(CORPUS), 16, 16)
    assert n == len(CORPUS) - 1 and f"loss {loss:.4f} nats/token" in r.stdout


def test_chat_uses_the_models_tokenizer(char_run, capsys):
    """A character model has no <|endoftext|>, which ends every turn of the chat template."""
    r = run(C.main, capsys, "--model", char_run.model)
    assert_clean_error(r, "tokenizer has no <|endoftext|> token", alone=True)


def test_resuming_or_fine_tuning_a_char_model_keeps_its_tokenizer(char_run, tmp_path):
    T.train(data=str(char_run.data), out=str(tmp_path / "ft"), init=str(char_run.model), block_size=16,
            batch_size=2, steps=1, eval_interval=1, eval_batches=1, log=quiet)
    assert TK.same(TK.read_tokenizer(tmp_path / "ft"), TK.read_tokenizer(char_run.model))


# --- a vocabulary mismatch is one sentence -------------------------------------------------------

def test_train_refuses_data_whose_tokenizer_is_not_the_models(char_run, corpus, tmp_path, capsys, gpt2_vocab_model):
    D.prepare(corpus, tmp_path / "gpt2-data")
    r = run(T.main, capsys, "--data", tmp_path / "gpt2-data", "--init", char_run.model, "--out", tmp_path / "a",
            "--steps", 1, "--block-size", 16)
    assert_clean_error(r, "tokenised with GPT-2's BPE (50,257 tokens)", "characters (", "prepare the data")
    r = run(T.main, capsys, "--data", char_run.data, "--init", gpt2_vocab_model, "--out", tmp_path / "b",
            "--steps", 1, "--block-size", 16)
    assert_clean_error(r, "tokenised with characters", "uses GPT-2's BPE")
    D.prepare(corpus, tmp_path / "bpe-data", tokenizer="bpe:270")
    r = run(T.main, capsys, "--data", tmp_path / "bpe-data", "--init", char_run.model, "--out", tmp_path / "c",
            "--steps", 1, "--block-size", 16)
    assert_clean_error(r, "a trained BPE (270 tokens)")


def test_a_tokenizer_bigger_than_its_model_is_one_sentence(tmp_path):
    model = picogpt.init_model(GPT2Config(n_layer=1, n_head=1, n_embd=8, n_ctx=8, vocab_size=3))
    picogpt.save_model(model, tmp_path / "m", tokenizer=TK.CharTokenizer("abcd"))
    with pytest.raises(picogpt.PicoGPTError, match="tokenizer has 4 tokens but its model only 3"):
        picogpt.load_model(tmp_path / "m")


def test_gpt2_models_write_no_tokenizer_file(tmp_path):
    model = picogpt.init_model(GPT2Config(n_layer=1, n_head=1, n_embd=8, n_ctx=8, vocab_size=50257))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "tokenizer.json").write_text('{"type": "char", "chars": "ab"}')   # left by another model
    picogpt.save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    assert picogpt.get_tokenizer(picogpt.load_model(tmp_path / "m")).n_vocab == 50257


def test_text_file_data_is_gpt2_and_refused_for_a_char_model(char_run, tmp_path, capsys):
    text = write_text(tmp_path / "words.txt")
    r = run(T.main, capsys, "--data", text, "--init", char_run.model, "--out", tmp_path / "a", "--steps", 1)
    assert_clean_error(r, "uses characters")
