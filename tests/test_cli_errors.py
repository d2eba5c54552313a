"""What a new user met (issue 8, item 9): every mistake answered by one sentence that names what to
change, never a traceback, a silent acceptance or a misleading hint.

The commands run in this process through their `main(argv)` (fast); what they print is taken
with capsys and checked like a child process's output (helpers.assert_clean_error).
"""

import errno
import json
import os
import subprocess
import typing
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_clean_error, quiet

import picogpt
from picogpt import backend, data, download, eval as eval_cmd, files, generate, train, weights
from picogpt.errors import PicoGPTError
from picogpt.optim import AdamW
from picogpt.tokenizer import get_tokenizer
from picogpt.train import TrainConfig, Trainer


def run(main, *argv, capsys):
    """main(argv) in this process -> a CompletedProcess (returncode, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


TINY_TRAIN = ["--model", "gpt2-micro", "--n-embd", 16, "--block-size", 8, "--batch-size", 2, "--steps", 2,
              "--warmup-steps", 1, "--eval-interval", 2, "--eval-batches", 1, "--log-interval", 1, "--device", "cpu"]


def train_cli(capsys, data_path, out, *extra):
    return run(train.main, "--data", data_path, "--out", out, *TINY_TRAIN, *extra, capsys=capsys)


# --- generate ---------------------------------------------------------------------------------

def test_a_negative_seed_is_refused_before_anything_is_printed(gpt2_vocab_model, capsys):
    r = run(generate.main, "ROMEO:", "--model", gpt2_vocab_model, "--max-new-tokens", 3, "--seed", -1, capsys=capsys)
    assert_clean_error(r, "--seed", alone=True)


def test_a_zero_batch_size_is_refused(gpt2_vocab_model, capsys):
    r = run(generate.main, "ROMEO:", "--model", gpt2_vocab_model, "--batch-size", 0, capsys=capsys)
    assert_clean_error(r, "--batch-size", alone=True)


def test_samples_are_printed_batch_by_batch_as_each_is_done(gpt2_vocab_model, monkeypatch, capsys):
    """With --num-samples 5 --batch-size 2, when batch k starts, every sample of the earlier batches
    is already on stdout (and the header of the sample that streams next)."""
    written, calls = [], []
    real = generate.generate

    def recording(model, ids, *args, **kw):
        written.append(capsys.readouterr().out)
        calls.append((len(ids), "".join(written).count("---------- sample")))
        return real(model, ids, *args, **kw)

    monkeypatch.setattr(generate, "generate", recording)
    r = run(generate.main, "Hi", "--model", gpt2_vocab_model, "--max-new-tokens", 3, "--num-samples", 5,
            "--batch-size", 2, "--seed", 0, capsys=capsys)
    assert r.returncode == 0, r.stderr
    assert calls == [(2, 1), (2, 3), (1, 5)]   # (batch size, samples begun on stdout before it ran)
    assert ("".join(written) + r.stdout).count("---------- sample") == 5


def test_many_samples_are_numbered_in_order_and_reproducible(gpt2_vocab_model, capsys):
    args = ("Hi", "--model", gpt2_vocab_model, "--max-new-tokens", 3, "--num-samples", 5, "--batch-size", 2, "--seed", 4)
    a = run(generate.main, *args, capsys=capsys)
    b = run(generate.main, *args, capsys=capsys)
    assert a.returncode == 0 and a.stdout == b.stdout
    headers = [line for line in a.stdout.splitlines() if line.startswith("---------- sample")]
    assert headers == [f"---------- sample {i}" for i in range(1, 6)]


def test_one_batch_equals_the_api_with_the_same_seed(gpt2_vocab_model, capsys):
    """Batch 0 uses the seed itself: --num-samples 3 (one batch) is generate([p] * 3, seed=seed)."""
    r = run(generate.main, "Hi", "--model", gpt2_vocab_model, "--max-new-tokens", 4, "--num-samples", 3, "--seed", 2,
            "--temperature", 1.0, capsys=capsys)
    tok = get_tokenizer()
    ids = tok.encode("Hi")
    rows = picogpt.load_model(gpt2_vocab_model).generate([ids] * 3, max_new_tokens=4, temperature=1.0, top_k=200, seed=2)
    expected = "".join(f"---------- sample {i + 1}\nHi{tok.decode([t for t in row[len(ids):] if t != tok.eot_token])}\n"
                       for i, row in enumerate(rows))
    assert r.stdout == expected


# --- train: settings that trained wrongly or crashed --------------------------------------------

@pytest.mark.parametrize("flag, value", [("--beta1", -1), ("--beta1", 1), ("--beta1", 2), ("--beta2", 1.5),
                                         ("--beta2", "nan")])
def test_adamw_betas_outside_0_1_are_refused(text, tmp_path, capsys, flag, value):
    r = train_cli(capsys, text, tmp_path / "out", flag, value)
    assert_clean_error(r, flag, "below 1")
    assert not (tmp_path / "out").exists()


def test_adamw_itself_refuses_a_beta_of_1():
    with pytest.raises(PicoGPTError, match="betas"):
        AdamW({"w": np.zeros(3, np.float32)}, betas=(1.0, 0.95))


@pytest.mark.parametrize("value", [-1e-4, "nan", 1e-2])   # the last is above --lr 6e-4
def test_min_lr_must_be_between_0_and_lr(text, tmp_path, capsys, value):
    r = train_cli(capsys, text, tmp_path / "out", "--min-lr", value)
    assert_clean_error(r, "--min-lr", "--lr")


@pytest.mark.parametrize("value", [0, -2, "nan"])
def test_lora_alpha_must_be_positive(text, tmp_path, capsys, value):
    r = train_cli(capsys, text, tmp_path / "out", "--lora-rank", 2, "--lora-alpha", value)
    assert_clean_error(r, "--lora-alpha", "> 0")


def test_a_lora_rank_above_the_projections_size_is_refused(text, tmp_path, capsys):
    r = train_cli(capsys, text, tmp_path / "out", "--lora-rank", 100000)
    assert_clean_error(r, "--lora-rank", "at most 16")   # n_embd 16: c_attn is (16, 48), c_proj (16, 16)


@pytest.mark.parametrize("value", [0, -5])
def test_save_interval_must_be_positive(text, tmp_path, capsys, value):
    r = train_cli(capsys, text, tmp_path / "out", "--save-interval", value)
    assert_clean_error(r, "--save-interval")


def test_val_fraction_with_a_prepared_folder_is_refused(text, tmp_path, capsys):
    assert run(data.main, text, "--out", tmp_path / "prepared", capsys=capsys).returncode == 0
    r = train_cli(capsys, tmp_path / "prepared", tmp_path / "out", "--val-fraction", 0.2)
    assert_clean_error(r, "--val-fraction", "folder")
    # ... and without it the folder trains
    assert train_cli(capsys, tmp_path / "prepared", tmp_path / "out").returncode == 0


def test_resume_of_a_finished_run_says_there_is_nothing_to_do(text, tmp_path, capsys):
    out = tmp_path / "out"
    assert train_cli(capsys, text, out).returncode == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    r = train_cli(capsys, text, out, "--resume")
    assert r.returncode == 0 and "nothing to do" in r.stdout and "--steps" in r.stdout, r.stdout
    assert "resumed" in r.stdout and "done:" not in r.stdout
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before   # not a byte rewritten
    # a checkpoint past the steps asked for is a mistake, not nothing to do
    r = train_cli(capsys, text, out, "--resume", "--steps", 1)
    assert_clean_error(r, "step 2", "--steps")


def test_a_fresh_run_refuses_a_folder_holding_other_files(text, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"mine": true}')
    r = train_cli(capsys, text, out)
    assert_clean_error(r, "config.json", "--out")
    assert (out / "config.json").read_text() == '{"mine": true}'
    assert sorted(f.name for f in out.iterdir()) == ["config.json"]


def test_a_fresh_run_may_reuse_the_folder_of_a_run_killed_before_its_first_checkpoint(text, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_config.json").write_text("{}")
    (out / "log.jsonl").write_text("")
    (out / ".model.safetensors.tmp-123").write_bytes(b"half")
    assert train_cli(capsys, text, out).returncode == 0


def test_out_naming_a_file_is_refused(text, tmp_path, capsys):
    (tmp_path / "out").write_text("not a folder")
    assert_clean_error(train_cli(capsys, text, tmp_path / "out"), "is a file", "--out")


def test_a_train_bin_of_odd_size_is_refused(text, tmp_path, capsys):
    assert run(data.main, text, "--out", tmp_path / "prepared", capsys=capsys).returncode == 0
    train_bin = tmp_path / "prepared" / "train.bin"
    train_bin.write_bytes(train_bin.read_bytes()[:-1])
    assert_clean_error(train_cli(capsys, tmp_path / "prepared", tmp_path / "out"), "odd number of bytes", "picogpt.data")


def test_a_micro_batch_that_cannot_fit_in_memory_is_refused(text, tmp_path, capsys):
    r = train_cli(capsys, text, tmp_path / "out", "--batch-size", 10**9)
    assert_clean_error(r, "memory", "--batch-size", "--grad-accum")


# --- train: what the numbers mean -------------------------------------------------------------

def test_the_progress_line_says_its_loss_is_a_mean_and_the_log_has_each_step(text, tmp_path):
    lines = []
    cfg = TrainConfig(data=str(text), out=str(tmp_path / "out"), model="gpt2-micro", n_embd=16, block_size=8,
                      batch_size=2, steps=4, warmup_steps=1, eval_interval=4, eval_batches=1, log_interval=2,
                      device="cpu")
    Trainer(cfg, log=lines.append).run()
    progress = [line for line in lines if line.startswith("step ") and "|" in line]
    assert len(progress) == 2 and all("(mean of 2 steps)" in line for line in progress), progress
    records = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records if not r.get("eval")}
    assert sorted(losses) == [1, 2, 3, 4]
    printed = float(progress[0].split("| loss ")[1].split()[0])
    assert printed == pytest.approx((losses[1] + losses[2]) / 2, abs=1e-4)
    assert "its loss is the mean over those N steps" in " ".join(train.build_parser().format_help().split())


def test_trainer_step_counts_from_1_like_the_log(text, tmp_path):
    cfg = TrainConfig(data=str(text), out=str(tmp_path / "out"), model="gpt2-micro", n_embd=16, block_size=8,
                      batch_size=2, steps=2, eval_batches=1, device="cpu")
    t = Trainer(cfg, log=quiet)
    assert [t.step()["step"], t.step()["step"]] == [1, 2]
    assert t.step_num == 2


# --- TrainConfig's types and the parser's ---------------------------------------------------------

def test_train_config_optional_fields_are_typed_as_optional():
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        if f.default is None:
            assert type(None) in typing.get_args(hints[f.name]), (f.name, hints[f.name])
    assert hints["n_layer"] == int | None and hints["min_lr"] == float | None


def test_every_train_config_field_has_a_flag_with_an_explicit_type(capsys):
    parser = train.build_parser()
    args = parser.parse_args(["--data", "x", "--n-layer", "3", "--min-lr", "1e-5", "--lora-alpha", "16",
                              "--save-interval", "7", "--val-fraction", "0.1"])
    assert set(vars(args)) == {f.name for f in fields(TrainConfig)}
    assert (args.n_layer, args.min_lr, args.lora_alpha, args.save_interval, args.val_fraction) == (3, 1e-5, 16.0, 7, 0.1)
    assert type(args.n_layer) is int and type(args.lora_alpha) is float
    with pytest.raises(SystemExit) as e:   # argparse's own one-line usage error for a non-integer
        parser.parse_args(["--data", "x", "--n-layer", "2.5"])
    assert e.value.code == 2 and "invalid int value" in capsys.readouterr().err


# --- data -------------------------------------------------------------------------------------------

def test_data_out_naming_an_existing_file_is_refused_and_the_file_kept(text, tmp_path, capsys):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    assert_clean_error(run(data.main, text, "--out", existing, capsys=capsys), "is a file", alone=True)
    assert existing.read_text() == "keep me"


def test_data_out_under_a_file_cannot_be_created(text, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    r = run(data.main, text, "--out", tmp_path / "file.txt" / "sub", capsys=capsys)
    line = assert_clean_error(r, "cannot create", "file.txt", alone=True)
    assert "free some" not in line


def test_data_out_through_a_broken_link_cannot_be_created(text, tmp_path, capsys):
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    r = run(data.main, text, "--out", tmp_path / "gone" / "sub", capsys=capsys)
    assert_clean_error(r, "cannot create", "gone", alone=True)


def _refuse_with(code):
    """A stand-in for an os function that fails with errno `code`."""
    def refuse(*_a, **_kw):
        raise OSError(code, os.strerror(code))
    return refuse


def test_a_read_only_file_system_is_named_not_a_full_disk(text, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Path, "mkdir", _refuse_with(errno.EROFS))
    line = assert_clean_error(run(data.main, text, "--out", tmp_path / "new", capsys=capsys), "read-only", alone=True)
    assert "free some" not in line


def test_data_without_out_in_a_read_only_folder_names_out(text, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Path, "mkdir", _refuse_with(errno.EROFS))
    line = assert_clean_error(run(data.main, text, capsys=capsys), "read-only", "--out", alone=True)
    assert "data/words" in line


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "free some disk space"), (errno.EROFS, "read-only"),
                                         (errno.EISDIR, "a folder of that name"), (errno.EBUSY, "busy"),
                                         (errno.EACCES, "may not write")])
def test_a_failed_write_gets_advice_that_fits_its_cause(tmp_path, monkeypatch, code, words):
    monkeypatch.setattr(files.os, "replace", _refuse_with(code))
    with pytest.raises(PicoGPTError) as e:
        files.write_json(tmp_path / "x.json", {})
    assert words in str(e.value)
    assert ("free some" in str(e.value)) == (code == errno.ENOSPC)
    assert list(tmp_path.iterdir()) == []   # the temporary file is gone too


# --- tokenizer ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [60000, 50257, -1])
def test_decoding_an_id_outside_the_vocabulary_is_one_sentence(bad):
    with pytest.raises(PicoGPTError, match=f"token id {bad}"):
        get_tokenizer().decode([464, bad])
    assert get_tokenizer().decode([464]) == "The"


# --- eval ---------------------------------------------------------------------------------------------

def test_eval_of_an_empty_file_does_not_speak_of_training(gpt2_vocab_model, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("  \n")
    line = assert_clean_error(run(eval_cmd.main, "--model", gpt2_vocab_model, "--text", tmp_path / "empty.txt",
                                  capsys=capsys), "empty", "score")
    assert "train" not in line


@pytest.mark.parametrize("tail", [0, -0.5, 1.5, "nan"])
def test_eval_tail_outside_0_1_names_tail(gpt2_vocab_model, text, capsys, tail):
    line = assert_clean_error(run(eval_cmd.main, "--model", gpt2_vocab_model, "--text", text, "--tail", tail,
                                  capsys=capsys), "--tail", alone=True)
    assert "validation fraction" not in line


def test_eval_tail_1_scores_everything(gpt2_vocab_model, text, capsys):
    r = run(eval_cmd.main, "--model", gpt2_vocab_model, "--text", text, "--tail", 1, "--stride", 64, capsys=capsys)
    assert r.returncode == 0 and "all" in r.stdout and "the last" not in r.stdout


def test_eval_context_longer_than_the_model_is_refused(gpt2_vocab_model, text, capsys):
    r = run(eval_cmd.main, "--model", gpt2_vocab_model, "--text", text, "--context", 100000, capsys=capsys)
    assert_clean_error(r, "100000", "64", "--context")


# --- models: names, folders, configs --------------------------------------------------------------

def test_shakespeare_names_the_bundled_model():
    assert weights.find_checkpoint("shakespeare") == weights.find_checkpoint(None) == weights.BUNDLED


def test_train_init_shakespeare_starts_from_the_bundled_model(text, tmp_path):
    cfg = TrainConfig(data=str(text), out=str(tmp_path / "out"), init="shakespeare", block_size=8, batch_size=1,
                      steps=1, eval_batches=1, device="cpu")
    trainer = Trainer(cfg, log=quiet)
    bundled = picogpt.load_model()
    assert trainer.model.config.replace(dropout=0.0) == bundled.config.replace(dropout=0.0)
    np.testing.assert_array_equal(trainer.model.params["wpe.weight"], bundled.params["wpe.weight"])


def test_a_missing_model_folder_is_called_missing_not_unknown(capsys):
    r = run(generate.main, "Hi", "--model", "/nonexistent/dir", capsys=capsys)
    line = assert_clean_error(r, "no folder", "/nonexistent/dir", alone=True)
    assert "unknown model" not in line


def test_an_unknown_name_lists_shakespeare(capsys):
    assert_clean_error(run(generate.main, "Hi", "--model", "gpt3-mega", capsys=capsys), "unknown model", "shakespeare")


def test_a_config_without_n_embd_names_n_embd(gpt2_vocab_model, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    cfg = json.loads((gpt2_vocab_model / "config.json").read_text())
    del cfg["n_embd"]
    (broken / "config.json").write_text(json.dumps(cfg))
    (broken / "model.safetensors").write_bytes((gpt2_vocab_model / "model.safetensors").read_bytes())
    line = assert_clean_error(run(generate.main, "Hi", "--model", broken, capsys=capsys), "n_embd", alone=True)
    assert "n_head" not in line


def test_an_empty_folder_named_like_a_hub_model_does_not_hide_it(tmp_path, monkeypatch):
    """An empty gpt2/ (a failed download's leftover) in the working folder: --model gpt2 still means the Hub's."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gpt2").mkdir()
    monkeypatch.setenv("PICOGPT_WEIGHTS", str(tmp_path / "weights"))
    asked = []
    monkeypatch.setattr(weights, "download", asked.append)
    assert weights.find_checkpoint("gpt2") == tmp_path / "weights" / "gpt2"
    assert asked == ["gpt2"]


def test_the_gpu_hint_says_how_to_install_the_extra_from_a_clone(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", None)
    with pytest.raises(PicoGPTError) as e:
        backend.resolve_device("gpu")
    assert 'pip install ".[gpu]"' in str(e.value) and "picogpt-numpy[" not in str(e.value)


# --- download -----------------------------------------------------------------------------------------

def test_a_base_url_that_is_not_a_url_says_so(tmp_path, capsys):
    r = run(download.main, "gpt2", "--dir", tmp_path, "--base-url", "not-a-url", "--quiet", capsys=capsys)
    line = assert_clean_error(r, "not-a-url", "https://", alone=True)
    assert "MissingSchema" not in line and "connection" not in line


def test_a_download_folder_that_cannot_be_made_says_why(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    r = run(download.main, "gpt2", "--dir", tmp_path / "file.txt", "--base-url", "http://127.0.0.1:9", "--quiet",
            capsys=capsys)
    line = assert_clean_error(r, "cannot create", "a file", alone=True)
    assert "free some" not in line
