"""picogpt.data: `python -m picogpt.data` (text -> train.bin, val.bin, meta.json) and batches."""

import json

import numpy as np
from helpers import assert_clean_error, run_module

import picogpt
from picogpt import data as D


def test_data_cli_writes_train_val_and_meta(text, tmp_path):
    out = tmp_path / "prepared"
    r = run_module("picogpt.data", text, "--out", out)
    assert r.returncode == 0, r.stderr
    ids = np.array(picogpt.get_tokenizer().encode(text.read_text()), dtype=np.uint16)
    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    val = np.fromfile(out / "val.bin", dtype=np.uint16)
    n_val = max(1, int(len(ids) * 0.05))
    np.testing.assert_array_equal(val, ids[-n_val:])          # the LAST 5%, not a shuffled sample
    np.testing.assert_array_equal(train, ids[:-n_val])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokens"] == len(ids) and meta["train_tokens"] == len(train) and meta["val_tokens"] == n_val
    assert meta["dtype"] == "uint16"
    assert not [f for f in out.iterdir() if ".tmp" in f.name]
    # A prepared folder and the text file give the trainer the same tokens.
    for a, b in zip(D.load_dataset(out), D.load_dataset(text)):
        np.testing.assert_array_equal(a, b)


def test_data_cli_val_fraction(text, tmp_path):
    r = run_module("picogpt.data", text, "--out", tmp_path / "p", "--val-fraction", 0.2)
    assert r.returncode == 0, r.stderr
    n = len(picogpt.get_tokenizer().encode(text.read_text()))
    assert len(np.fromfile(tmp_path / "p" / "val.bin", dtype=np.uint16)) == int(n * 0.2)
    assert_clean_error(run_module("picogpt.data", text, "--out", tmp_path / "q", "--val-fraction", 1.5), "fraction")


def test_data_cli_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    assert_clean_error(run_module("picogpt.data", tmp_path / "empty.txt", "--out", tmp_path / "a"), "empty")
    assert_clean_error(run_module("picogpt.data", tmp_path / "missing.txt", "--out", tmp_path / "b"), "missing.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    assert_clean_error(run_module("picogpt.data", tmp_path / "latin1.txt", "--out", tmp_path / "c"), "utf-8")


def test_get_batch_targets_are_inputs_shifted_by_one():
    ids = np.arange(100, dtype=np.uint16)
    x, y = D.get_batch(ids, 8, 10, np.random.default_rng(0))
    assert x.shape == y.shape == (8, 10) and x.dtype == np.int64
    np.testing.assert_array_equal(y, x + 1)
    assert x.min() >= 0 and y.max() <= 99
