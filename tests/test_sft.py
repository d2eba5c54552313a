"""SFT data (picogpt.sft): the template and its loss mask, what the loss counts, padded batches,
the epoch sampler's exact resume, the on-disk format, the chat prompt, and bad records.

Model-level tests use a tiny random GPT-2 in float64 over a 128-symbol character vocabulary
(CharTok below), so that hypothesis can afford many records; the template tests use GPT-2's BPE.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import picogpt
from picogpt import sft
from picogpt.config import GPT2Config
from picogpt.errors import PicoGPTError
from picogpt.tokenizer import get_tokenizer


class CharTok:
    """One token per ASCII character, 127 = <|endoftext|>: lengths are easy to predict."""

    eot_token = 127

    def encode_ordinary(self, text):
        return [min(ord(c), 126) for c in text]

    def decode(self, ids):
        return "".join("<|endoftext|>" if i == 127 else chr(i) for i in ids)


CHAR = CharTok()
CONFIG = GPT2Config(n_layer=1, n_head=2, n_embd=16, n_ctx=128, vocab_size=128)


@pytest.fixture(scope="module")
def model():
    return picogpt.init_model(CONFIG, dtype="float64", seed=0)


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer()


roles = st.sampled_from(["user", "assistant", "HAMLET", "Hor"])
texts = st.text(alphabet="abcdefgh ,.!\n", min_size=1, max_size=12).filter(lambda s: s.strip())
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": texts}), min_size=1, max_size=4)


def write_lines(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


# --- the template and its mask --------------------------------------------------------------

def test_template_is_header_content_endoftext(tok):
    rec = {"prompt": "What is your name?", "response": "  Romeo. "}
    ids, mask = sft.encode_record(rec, tok)
    head_u, head_a = tok.encode_ordinary("user:\n"), tok.encode_ordinary("assistant:\n")
    q, a = tok.encode_ordinary("What is your name?"), tok.encode_ordinary("Romeo.")
    assert ids.tolist() == head_u + q + [50256] + head_a + a + [50256]
    assert mask.tolist() == [False] * (len(head_u) + len(q) + 1 + len(head_a)) + [True] * (len(a) + 1)
    assert tok.decode(ids) == "user:\nWhat is your name?<|endoftext|>assistant:\nRomeo.<|endoftext|>"
    same = {"messages": [{"role": "user", "content": "What is your name?"}, {"role": "assistant", "content": "Romeo."}]}
    assert np.array_equal(sft.encode_record(same, tok)[0], ids)


def test_literal_endoftext_in_content_stays_text(tok):
    ids, _ = sft.encode_record({"prompt": "say <|endoftext|>", "response": "no"}, tok)
    assert (ids == 50256).sum() == 2  # only the two that close the turns


@given(msgs=messages)
def test_mask_marks_exactly_the_responders_turns(msgs):
    ids, mask = sft.encode_record({"messages": msgs}, CHAR)
    responder, pos = msgs[-1]["role"], 0
    for m in msgs:
        head, body = len(m["role"]) + 2, len(m["content"].strip()) + 1
        assert not mask[pos:pos + head].any()                          # "{role}:\n" never trained
        assert ids[pos + head + body - 1] == CHAR.eot_token            # every turn closes with EOT
        assert (mask[pos + head:pos + head + body] == (m["role"] == responder)).all()
        pos += head + body
    assert pos == len(ids) == len(mask)


def test_train_flag_overrides_the_rule():
    msgs = [{"role": "a", "content": "x", "train": True}, {"role": "b", "content": "y"},
            {"role": "b", "content": "z", "train": False}, {"role": "b", "content": "w"}]
    _, mask = sft.encode_record({"messages": msgs}, CHAR)
    # a:\nx<eot> b:\ny<eot> b:\nz<eot> b:\nw<eot>: 5 tokens per turn, content + EOT = the last 2
    assert mask.reshape(4, 5)[:, 3:].all(axis=1).tolist() == [True, True, False, True]
    with pytest.raises(PicoGPTError, match="no trained turn"):
        sft.encode_record({"messages": [{"role": "a", "content": "x", "train": False}]}, CHAR)


@given(msgs=messages)
def test_targets_ignore_every_untrained_position(msgs):
    ids, mask = sft.encode_record({"messages": msgs}, CHAR)
    x, y = sft.targets(ids, mask)
    assert np.array_equal(x, ids[:-1]) and len(y) == len(ids) - 1
    assert np.array_equal(y == -100, ~mask[1:])
    assert np.array_equal(y[mask[1:]], ids[1:][mask[1:]])


def test_render_marks_the_trained_text(tok):
    rec = {"messages": [{"role": "A", "content": "Hi."}, {"role": "B", "content": "Hello."},
                        {"role": "A", "content": "Bye."}, {"role": "B", "content": "Farewell."}]}
    assert sft.render(rec, tok) == ("A:\nHi.<|endoftext|>B:\n[[Hello.<|endoftext|>]]"
                                    "A:\nBye.<|endoftext|>B:\n[[Farewell.<|endoftext|>]]")


def test_show_prints_the_first_records(tmp_path, tok):
    path = write_lines(tmp_path, [json.dumps({"prompt": f"q{i}", "response": f"r{i}"}) for i in range(3)])
    text = sft.show(path, tok, 2)
    assert text.count("--- record") == 2 and "[[r1<|endoftext|>]]" in text and "q2" not in text


# --- what the loss counts ----------------------------------------------------------------------

def _loss(model, x, y):
    return model.loss_and_grads(x[None], y[None])


@given(msgs=messages, seed=st.integers(0, 2**32 - 1))
def test_prompt_targets_change_nothing_and_response_tokens_do(model, msgs, seed):
    msgs = msgs + [{"role": "zz", "content": "ok"}]          # at least one context turn before the reply
    ids, mask = sft.encode_record({"messages": msgs}, CHAR)
    x, y = sft.targets(ids, mask)
    rng = np.random.default_rng(seed)
    # Any other next tokens at the untrained positions, masked the same way: the same targets.
    other = np.where(mask[1:], ids[1:], rng.integers(0, 127, len(y)))
    _, y2 = sft.targets(np.concatenate([ids[:1], other]), mask)
    assert np.array_equal(y, y2)
    loss, grads = _loss(model, x, y)
    # The loss is the mean of -log p(target) over the trained positions only, from the full logits.
    logits = np.asarray(model.forward(x[None]))[0]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    kept = y != -100
    assert loss == pytest.approx(-logp[kept, y[kept]].mean(), rel=1e-10)
    # Training the prompt too gives another loss: the mask matters.
    all_loss, _ = _loss(model, x, ids[1:])
    assert all_loss != pytest.approx(loss, rel=1e-9)
    # Changing one response token changes the loss and the gradients.
    j = rng.choice(np.flatnonzero(kept))
    y3 = y.copy()
    y3[j] = (y3[j] + 1 + rng.integers(0, 126)) % 127
    loss3, grads3 = _loss(model, x, y3)
    assert loss3 != loss and not np.array_equal(grads3["wte.weight"], grads["wte.weight"])


@given(msgs=messages)
def test_untrained_positions_send_no_gradient(model, msgs):
    """d loss / d hidden state is exactly zero at every position whose target is ignored."""
    from picogpt import layers as L
    from picogpt import model as M

    ids, mask = sft.encode_record({"messages": msgs}, CHAR)
    x, y = sft.targets(ids, mask)
    hidden, _ = M.forward(model.params, CONFIG, x[None], head=False)
    _, dx, _ = L.lm_head_cross_entropy(hidden[0], model.params["wte.weight"], y)
    assert np.all(dx[y == -100] == 0) and np.all(np.abs(dx[y != -100]).sum(-1) > 0)


@given(batch=st.lists(messages, min_size=1, max_size=4))
def test_padded_batch_is_the_examples_one_at_a_time(model, batch):
    """The batch loss is the mean over every trained token, so with n_i trained targets in example i
    it is sum_i n_i loss_i / sum_i n_i, and so are the gradients; padding adds nothing."""
    encoded = [sft.encode_record({"messages": m}, CHAR) for m in batch]
    examples = _examples(encoded)
    x, y = sft.ExampleBatches(examples, batch_size=len(batch), block_size=CONFIG.n_ctx, pad_id=127).next()
    loss, grads = model.loss_and_grads(x, y)
    total, weighted, wgrad = 0, 0.0, {k: 0.0 for k in grads}
    for ids, mask in encoded:
        xi, yi = sft.targets(ids, mask)
        li, gi = _loss(model, xi, yi)
        n = int((yi != -100).sum())
        total, weighted = total + n, weighted + n * li
        wgrad = {k: wgrad[k] + n * gi[k] for k in gi}
    assert loss == pytest.approx(weighted / total, rel=1e-10)
    for k, g in grads.items():
        np.testing.assert_allclose(g, wgrad[k] / total, rtol=1e-8, atol=1e-14)


# --- batches and the sampler --------------------------------------------------------------------

def _examples(encoded):
    ids = np.concatenate([e[0] for e in encoded]).astype(np.uint16)
    mask = np.concatenate([e[1] for e in encoded]).astype(np.uint8)
    offsets = np.concatenate([[0], np.cumsum([len(e[0]) for e in encoded])])
    return sft.Examples(ids, offsets, mask)


def _toy(n, seed=0):
    rng = np.random.default_rng(seed)
    return _examples([sft.encode_record({"prompt": "p" * int(rng.integers(1, 9)), "response": f"r{i}"}, CHAR)
                      for i in range(n)])


def test_every_epoch_visits_every_example_once_in_a_new_order():
    batches = sft.ExampleBatches(_toy(10), batch_size=4, block_size=40, seed=3)
    assert len(batches) == 3
    epochs = [np.concatenate([batches.next_indices() for _ in range(3)]) for _ in range(2)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1])
    assert batches.state() == {"epoch": 2, "position": 0, "seed": 3}


@given(n=st.integers(1, 12), bs=st.integers(1, 5), k=st.integers(0, 15), seed=st.integers(0, 99))
def test_resume_gives_exactly_the_same_batches(n, bs, k, seed):
    a = sft.ExampleBatches(_toy(n), bs, 40, seed=seed)
    for _ in range(k):
        a.next()
    b = sft.ExampleBatches(_toy(n), bs, 40, seed=seed)
    b.load_state(json.loads(json.dumps(a.state())))   # through JSON, as a checkpoint stores it
    for _ in range(2 * len(a) + 1):
        (xa, ya), (xb, yb) = a.next(), b.next()
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


def test_padding_and_left_truncation():
    long = sft.encode_record({"prompt": "abcdefghij" * 3, "response": "xyz"}, CHAR)   # 52 tokens
    short = sft.encode_record({"prompt": "a", "response": "b"}, CHAR)                 # 21 tokens
    batches = sft.ExampleBatches(_examples([long, short]), batch_size=2, block_size=30, seed=0, pad_id=99)
    assert batches.truncated == 1
    x, y = batches.next()
    assert x.shape == y.shape == (2, 30)
    b_long = int(np.flatnonzero((y != -100).sum(1) == 4)[0])
    b_short = 1 - b_long
    # The long one keeps its last 31 tokens: its prompt is cut on the left, its reply is whole.
    assert np.array_equal(x[b_long], long[0][-31:-1])
    assert y[b_long][-4:].tolist() == CHAR.encode_ordinary("xyz") + [127]
    # The short one: its 20 inputs and targets, then padding that is never a target.
    assert np.array_equal(x[b_short, :20], short[0][:-1]) and np.all(x[b_short, 20:] == 99)
    assert np.all(y[b_short, 20:] == -100) and (y[b_short] != -100).sum() == 2


def test_classification_batches(tmp_path):
    sft.write_examples(tmp_path, "train", [np.arange(5), np.arange(3), np.arange(9)], labels=[2, 0, 1],
                       task="classify", label_names=["a", "b", "c"])
    ex = sft.load_examples(tmp_path, "train")
    batches = sft.ExampleBatches(ex, batch_size=3, block_size=6, seed=0)
    assert batches.truncated == 1
    x, lengths, labels = batches.next()
    assert x.shape == (3, 6)
    by_label = {int(lab): (x[b], int(n)) for b, (n, lab) in enumerate(zip(lengths, labels))}
    assert by_label[2][1] == 5 and by_label[0][1] == 3 and by_label[1][1] == 6
    assert np.array_equal(by_label[1][0], np.arange(3, 9))          # the last 6 of 9: cut on the left


# --- on disk -------------------------------------------------------------------------------------

def test_write_and_load_round_trip(tmp_path, tok):
    recs = [{"prompt": "Who's there?", "response": "Nay, answer me."}, {"prompt": "Long live the king!", "response": "Bernardo?"}]
    encoded = [sft.encode_record(r, tok) for r in recs]
    meta = sft.write_examples(tmp_path, "train", [e[0] for e in encoded], [e[1] for e in encoded], source="x.jsonl")
    sft.write_examples(tmp_path, "val", [encoded[0][0]], [encoded[0][1]])
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["task"] == "sft" and meta["template"] == sft.TEMPLATE and meta["source"] == "x.jsonl"
    assert meta["splits"]["train"] == {"examples": 2, "tokens": sum(len(e[0]) for e in encoded),
                                       "longest": max(len(e[0]) for e in encoded),
                                       "trained_tokens": int(sum(e[1].sum() for e in encoded))}
    assert meta["splits"]["val"]["examples"] == 1
    ex = sft.load_examples(tmp_path, "train")
    assert len(ex) == 2
    for i, (ids, mask) in enumerate(encoded):
        got_ids, got_mask, label = ex[i]
        assert np.array_equal(got_ids, ids) and np.array_equal(got_mask, mask) and label is None


def test_load_errors_are_one_sentence(tmp_path):
    with pytest.raises(PicoGPTError, match="no meta.json"):
        sft.load_examples(tmp_path)
    sft.write_examples(tmp_path, "train", [np.arange(4)], [np.ones(4, bool)])
    with pytest.raises(PicoGPTError, match="no 'val' split"):
        sft.load_examples(tmp_path, "val")
    (tmp_path / "train.mask.bin").write_bytes(b"\x01")
    with pytest.raises(PicoGPTError, match="disagree"):
        sft.load_examples(tmp_path)
    with pytest.raises(PicoGPTError, match="empty"):
        sft.write_examples(tmp_path, "train", [])
    (tmp_path / "meta.json").write_text('{"tokenizer": "gpt2"}')
    with pytest.raises(PicoGPTError, match="plain text"):
        sft.load_examples(tmp_path)


# --- the chat prompt ------------------------------------------------------------------------------

def test_chat_prompt_is_what_training_saw(tok):
    history = [{"role": "user", "content": "Hello there."}, {"role": "assistant", "content": "Good morrow."},
               {"role": "user", "content": "How art thou?"}]
    reply = {"role": "assistant", "content": "Well, I thank you."}
    ids, mask = sft.encode_record({"messages": history + [reply]}, tok)
    prompt, dropped = sft.chat_prompt(history, tok, n_ctx=1024, max_new=10)
    assert dropped == 0
    first_trained_of_reply = len(ids) - int(mask[::-1].argmin())  # where the last trained run starts
    assert prompt == ids[:first_trained_of_reply].tolist()


@given(contents=st.lists(texts, min_size=1, max_size=6), n_ctx=st.integers(20, 60), max_new=st.integers(1, 8))
def test_chat_prompt_drops_the_oldest_turns_to_fit(contents, n_ctx, max_new):
    history = [{"role": "user" if i % 2 == 0 else "bot", "content": c} for i, c in enumerate(contents)]
    cost = [len(h["role"]) + 2 + len(h["content"].strip()) + 1 for h in history]
    tail = len("bot") + 2
    if cost[-1] + tail + max_new > n_ctx:
        with pytest.raises(PicoGPTError, match="does not fit"):
            sft.chat_prompt(history, CHAR, n_ctx, max_new, responder="bot")
        return
    ids, dropped = sft.chat_prompt(history, CHAR, n_ctx, max_new, responder="bot")
    assert len(ids) + max_new <= n_ctx
    assert len(ids) == sum(cost[dropped:]) + tail
    if dropped:  # keeping one more turn would not have fitted
        assert sum(cost[dropped - 1:]) + tail + max_new > n_ctx


# --- bad records -----------------------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a", "response": ', "line 3: malformed JSON"),
    ('["prompt", "response"]', "line 3: a record must be a JSON object"),
    ('{"prompt": "a"}', "line 3: missing field 'response'"),
    ('{"text": "a"}', "line 3: missing field"),
    ('{"prompt": "a", "response": 7}', "line 3: 'response' must be a string, got int"),
    ('{"messages": []}', "line 3: 'messages' must be a non-empty list"),
    ('{"messages": [{"role": "a"}]}', "line 3, turn 1: missing field 'content'"),
    ('{"messages": [{"role": "a", "content": "x"}, "hi"]}', "line 3, turn 2: a turn must be an object"),
    ('{"messages": [{"role": " ", "content": "x"}]}', "line 3, turn 1: 'role' is empty"),
    ('{"messages": [{"role": "a", "content": "x", "train": "yes"}]}', "line 3, turn 1: 'train' must be true or false"),
])
def test_a_bad_record_names_its_line(tmp_path, line, message):
    good = json.dumps({"prompt": "a", "response": "b"})
    path = write_lines(tmp_path, [good, "", line])      # a blank line still counts in the numbering
    with pytest.raises(PicoGPTError, match=message) as e:
        sft.read_sft_jsonl(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(PicoGPTError, match="empty"):
        sft.read_sft_jsonl(write_lines(tmp_path, ["", "  "]))
    with pytest.raises(PicoGPTError, match="no JSONL file"):
        sft.read_sft_jsonl(tmp_path / "nothing.jsonl")


def test_classification_records(tmp_path):
    path = write_lines(tmp_path, ['{"text": "a", "label": "tragedy"}', '{"text": "b", "label": "comedy"}',
                                  '{"text": "c", "label": 3}'])
    texts_, ids, names = sft.read_classify_jsonl(path)
    assert texts_ == ["a", "b", "c"] and names == ["3", "comedy", "tragedy"] and ids == [2, 1, 0]
    with pytest.raises(PicoGPTError, match="line 3: unknown label '3' \\(known: comedy, tragedy\\)"):
        sft.read_classify_jsonl(path, labels=["comedy", "tragedy"])
    bad = write_lines(tmp_path, ['{"text": "a", "label": "x"}', '{"text": "a", "label": [1]}'], "bad.jsonl")
    with pytest.raises(PicoGPTError, match="line 2: 'label' must be a string or an integer"):
        sft.read_classify_jsonl(bad)


# --- the GPU path -----------------------------------------------------------------------------------

@pytest.mark.gpu
def test_sft_batch_loss_on_the_gpu_equals_the_cpu(model):
    batch = [[{"role": "u", "content": "hello"}, {"role": "b", "content": "hi there"}],
             [{"role": "u", "content": "a"}, {"role": "b", "content": "b"}, {"role": "u", "content": "c"},
              {"role": "b", "content": "dd"}]]
    x, y = sft.ExampleBatches(_examples([sft.encode_record({"messages": m}, CHAR) for m in batch]), 2, 64, pad_id=127).next()
    cpu_loss, cpu_grads = model.loss_and_grads(x, y)
    gpu_loss, gpu_grads = model.to("gpu").loss_and_grads(x, y)
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-10)
    for k, g in gpu_grads.items():
        np.testing.assert_allclose(picogpt.asnumpy(g), cpu_grads[k], rtol=1e-8, atol=1e-14)


# --- the shipped data (examples/dialogue, examples/genre) ------------------------------------------

EXAMPLES = Path(__file__).parent.parent / "examples"


def _plays(path):
    return {json.loads(line)["play"] for line in path.read_text().splitlines()}


def test_shipped_dialogue_parses_and_holds_out_whole_plays(tok):
    val = sft.read_sft_jsonl(EXAMPLES / "dialogue" / "val.jsonl")
    assert len(val) > 1000 and all(len(t) == 2 and t[0]["role"] != t[1]["role"] for t in val)
    ids, mask = sft.encode_record(val[0], tok)
    assert mask.any() and not mask[:len(tok.encode_ordinary(val[0][0]["role"]))].any()
    train_plays, val_plays = _plays(EXAMPLES / "dialogue" / "train.jsonl"), _plays(EXAMPLES / "dialogue" / "val.jsonl")
    assert len(val_plays) == 6 and not train_plays & val_plays


def test_shipped_genre_data_is_labelled_and_holds_out_whole_plays():
    _, y, labels = sft.read_classify_jsonl(EXAMPLES / "genre" / "val.jsonl")
    assert labels == ["comedy", "history", "tragedy"] and np.bincount(y).tolist() == [200, 200, 200]
    assert not _plays(EXAMPLES / "genre" / "train.jsonl") & _plays(EXAMPLES / "genre" / "val.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize("script, folder", [("make_dialogue.py", "dialogue"), ("make_genre.py", "genre")])
def test_the_builders_reproduce_the_shipped_files(tmp_path, script, folder):
    import subprocess
    import sys

    subprocess.run([sys.executable, str(EXAMPLES / script), str(tmp_path)], check=True, capture_output=True)
    for split in ("train", "val"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (EXAMPLES / folder / f"{split}.jsonl").read_bytes()
