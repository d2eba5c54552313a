"""Token shards (picogpt/shards.py): llm.c's .bin format, exact round trips, loud truncation."""

import json

import numpy as np
import pytest
from helpers import quiet, run_module, write_text

from picogpt import get_tokenizer
from picogpt.data import get_batch
from picogpt.errors import PicoGPTError
from picogpt.shards import (EOT, HEADER_BYTES, MAGIC, ShardedTokens, load_shards, prepare_shards, read_shard,
                            write_shard)
from picogpt.train import TrainConfig, Trainer


def test_a_shard_round_trips_its_tokens_exactly_with_llm_c_header(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50257, size=1000).astype(np.uint16)
    write_shard(tmp_path / "a.bin", tokens)
    header = np.fromfile(tmp_path / "a.bin", dtype="<i4", count=256)
    assert list(header[:3]) == [MAGIC, 1, 1000] and not header[3:].any()
    assert (tmp_path / "a.bin").stat().st_size == HEADER_BYTES + 2 * 1000
    assert np.array_equal(read_shard(tmp_path / "a.bin"), tokens)


@pytest.mark.parametrize("cut", [1, 999, HEADER_BYTES + 10])
def test_a_truncated_shard_is_one_clear_sentence(tmp_path, cut):
    write_shard(tmp_path / "a.bin", np.arange(500, dtype=np.uint16))
    data = (tmp_path / "a.bin").read_bytes()
    (tmp_path / "a.bin").write_bytes(data[:cut])
    with pytest.raises(PicoGPTError, match=r"a\.bin is truncated: .*python -m picogpt\.data"):
        read_shard(tmp_path / "a.bin")


def test_a_file_that_is_not_a_shard_is_named(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\x01" * 5000)
    with pytest.raises(PicoGPTError, match="is not a token shard"):
        read_shard(tmp_path / "x.bin")


def test_windows_across_shard_boundaries_read_the_concatenation(tmp_path):
    parts = [np.arange(a, b, dtype=np.uint16) for a, b in ((0, 7), (7, 8), (8, 20))]
    for i, p in enumerate(parts):
        write_shard(tmp_path / f"train_{i:06d}.bin", p)
    whole = np.concatenate(parts)
    tokens = load_shards(tmp_path, "train")
    assert len(tokens) == 20 and tokens.max() == 19
    for a in range(20):
        for b in range(a, 21):
            assert np.array_equal(tokens[a:b], whole[a:b])
    x, y = get_batch(tokens, 50, 6, np.random.default_rng(0))
    assert np.array_equal(x[:, 1:], y[:, :-1]) and np.array_equal(y - x, np.ones_like(x))


def test_a_folder_of_text_and_jsonl_round_trips_through_the_tokenizer(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    texts = ["To be, or not to be: that is the question.", "Ünïcödé ✓ and <|endoftext|> as plain text.",
             "Once more unto the breach, dear friends, once more;", "A third document\nwith two lines."]
    (corpus / "a.txt").write_text(texts[0], encoding="utf-8")
    (corpus / "sub" / "b.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts[1:])) + "\n\n")
    (corpus / "ignored.csv").write_text("not a document")
    meta = prepare_shards([corpus], tmp_path / "out", val_fraction=0.2, shard_tokens=16, workers=2, progress=False)
    tok = get_tokenizer()
    expected = np.concatenate([[EOT] + tok.encode_ordinary(t) for t in texts]).astype(np.uint16)
    train, val = load_shards(tmp_path / "out", "train"), load_shards(tmp_path / "out", "val")
    got = np.concatenate([train[0:len(train)], val[0:len(val)]])
    assert np.array_equal(got, expected)
    assert len(val) == int(len(expected) * 0.2) == meta["val_tokens"]
    assert meta["train_shards"] == -(-len(train) // 16) > 1
    assert tok.decode(got.tolist()) == "".join("<|endoftext|>" + t for t in texts)


def test_bad_inputs_are_one_sentence(tmp_path):
    with pytest.raises(PicoGPTError, match="no file or folder"):
        prepare_shards([tmp_path / "missing"], tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PicoGPTError, match="no .txt or .jsonl"):
        prepare_shards([tmp_path / "empty"], tmp_path / "out", progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "no text field"}\n')
    with pytest.raises(PicoGPTError, match=r"bad\.jsonl, line 2: .*\"text\""):
        prepare_shards([bad], tmp_path / "out", progress=False, workers=1)


def test_the_data_command_shards_a_folder_and_training_reads_the_shards(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        write_text(corpus / f"part{i}.txt", n_lines=60, seed=i)
    r = run_module("picogpt.data", corpus, "--out", tmp_path / "data", "--shard-tokens", "1000", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "train shard(s)" in r.stdout and "3/3 files" in r.stderr        # the progress bar, on stderr
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["train_shards"] >= 2 and (tmp_path / "data" / "val_000000.bin").is_file()
    t = Trainer(TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "out"), model="gpt2-micro", n_embd=32,
                            block_size=16, batch_size=2, steps=1, eval_batches=1, device="cpu"), log=quiet)
    assert isinstance(t.train_ids, ShardedTokens) and len(t.train_ids) == meta["train_tokens"]
    assert np.isfinite(t.step()["loss"])
