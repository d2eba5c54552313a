"""`python -m picogpt.chat`: turns in the SFT template, replies streamed, the oldest turns dropped
to fit the context, Ctrl-C stopping a reply, /reset and /exit, turns from a pipe."""

import io
import subprocess
import sys

import numpy as np
import pytest
from helpers import FIXTURES, subprocess_env

import picogpt
from picogpt import chat as C
from picogpt import sft
from picogpt.errors import PicoGPTError


@pytest.fixture(scope="module")
def tok():
    return picogpt.get_tokenizer()


@pytest.fixture(scope="module")
def model(gpt2_vocab_model):
    return picogpt.load_model(gpt2_vocab_model)   # GPT-2's vocabulary, a context of 64


def new_chat(model, tok, **kw):
    out, err = io.StringIO(), io.StringIO()
    kw = {"max_new_tokens": 6, "temperature": 0.0, **kw}
    return C.Chat(model, tok, "HAMLET", "HORATIO", out=out, err=err, **kw), out, err


def run_piped(folder, text, *args):
    return subprocess.run([sys.executable, "-m", "picogpt.chat", "--model", str(folder), *map(str, args)], input=text,
                          capture_output=True, text=True, env=subprocess_env(), timeout=120)


def test_a_piped_three_turn_conversation_runs(gpt2_vocab_model):
    r = run_piped(gpt2_vocab_model, "Who is there?\nNay, answer me.\n\nLong live the king!\n",
                  "--max-new-tokens", 5, "--seed", 0, "--user", "BERNARDO", "--bot", "FRANCISCO")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    said = [line for line in lines if line.startswith("BERNARDO: ")]
    assert said == ["BERNARDO: Who is there?", "BERNARDO: Nay, answer me.", "BERNARDO: Long live the king!"]
    assert sum(line.startswith("FRANCISCO: ") for line in lines) == 3
    # the same conversation in this process, with the same seed: the same transcript
    args = C.build_parser().parse_args(["--model", str(gpt2_vocab_model), "--max-new-tokens", "5", "--seed", "0",
                                        "--user", "BERNARDO", "--bot", "FRANCISCO"])
    out = io.StringIO()
    C.run(args, stdin=io.StringIO("Who is there?\nNay, answer me.\n\nLong live the king!\n"), stdout=out,
          stderr=io.StringIO())
    assert out.getvalue() == r.stdout


def test_the_prompt_is_the_template_and_the_reply_joins_the_history(model, tok):
    chat, out, _ = new_chat(model, tok)
    reply = chat.reply("Who is there?")
    streamed = out.getvalue()
    assert reply and streamed.startswith("HORATIO: ") and streamed.endswith(f"{reply}\n")   # streamed = returned
    assert chat.history == [{"role": "HAMLET", "content": "Who is there?"}, {"role": "HORATIO", "content": reply}]
    chat.history.append({"role": "HAMLET", "content": "Speak."})
    want = sum((sum(sft.encode_turn(t["role"], t["content"], tok), []) for t in chat.history), []) + \
        tok.encode_ordinary("HORATIO:\n")
    assert chat.prompt() == want


def test_a_history_longer_than_the_context_is_cut_from_the_oldest_turn(model, tok):
    chat, _, err = new_chat(model, tok, max_new_tokens=8)
    said = [f"Speech number {i}: the king is dead and the queen is fair" for i in range(6)]
    for text in said:
        chat.reply(text)
        ids = chat.prompt()
        assert len(ids) + 8 <= model.config.n_ctx   # what is sent always fits with the new tokens
        assert chat.history[-2]["content"] == text    # the newest turns are kept...
    users = [t["content"] for t in chat.history if t["role"] == "HAMLET"]
    assert users == said[len(said) - len(users):] and len(users) < len(said)   # ...the oldest went
    assert err.getvalue().count("oldest turns are dropped") == 1   # said once, not at every turn


def test_a_message_too_long_for_the_context_is_refused_and_the_session_goes_on(gpt2_vocab_model):
    args = C.build_parser().parse_args(["--model", str(gpt2_vocab_model), "--max-new-tokens", "4", "--temperature", "0"])
    out, err = io.StringIO(), io.StringIO()
    C.run(args, stdin=io.StringIO("word " * 80 + "\nHello.\n"), stdout=out, stderr=err)
    assert "error: the last message is" in err.getvalue()
    assert "user: Hello." in out.getvalue() and out.getvalue().count("assistant: ") == 1


def test_ctrl_c_stops_the_reply_not_the_session(model, tok, monkeypatch):
    real = C.generate
    calls = []

    def interrupted_once(*args, on_token=None, **kw):
        calls.append(1)
        if len(calls) == 1:
            on_token(0, np.array([tok.encode_ordinary(" Stay")[0]]))
            raise KeyboardInterrupt
        return real(*args, on_token=on_token, **kw)

    monkeypatch.setattr(C, "generate", interrupted_once)
    chat, out, _ = new_chat(model, tok)
    assert chat.reply("Speak!") == "Stay"   # what was written before Ctrl-C is the reply
    assert "[stopped]" in out.getvalue()
    chat.reply("Again.")
    assert len(chat.history) == 4 and len(calls) == 2


def test_reset_and_exit(gpt2_vocab_model):
    args = C.build_parser().parse_args(["--model", str(gpt2_vocab_model), "--max-new-tokens", "3", "--temperature", "0"])
    out, err = io.StringIO(), io.StringIO()
    C.run(args, stdin=io.StringIO("One.\n/reset\nTwo.\n/exit\nThree.\n"), stdout=out, stderr=err)
    assert "user: One." in out.getvalue() and "user: Two." in out.getvalue() and "Three" not in out.getvalue()
    assert "forgotten" in err.getvalue()


def test_the_decoding_options_of_generate_reach_the_reply(model, tok):
    chat, out, _ = new_chat(model, tok, max_new_tokens=12, no_repeat_ngram_size=1)
    reply_ids = tok.encode_ordinary(chat.reply("Who is there?"))
    assert len(reply_ids) == len(set(reply_ids))   # no token twice
    free, _, _ = new_chat(model, tok, max_new_tokens=12)
    text = free.reply("Who is there?")
    stop = text[len(text) // 2:len(text) // 2 + 2]   # a piece of what the model says unprompted
    stopped, _, _ = new_chat(model, tok, max_new_tokens=12, stop=[stop])
    assert stopped.reply("Who is there?") == text[:text.find(stop)].strip()   # the history keeps what came before


@pytest.mark.parametrize("args, needle", [(["--model", FIXTURES / "tiny-gpt2-cls"], "sequence classifier"),
                                          (["--max-new-tokens", "0"], "--max-new-tokens"),
                                          (["--user", "A", "--bot", "A"], "two different"),
                                          (["--temperature", "-1"], "temperature")])
def test_bad_input_is_one_sentence(args, needle, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    assert C.main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err


def test_a_classifier_cannot_chat(tok):
    with pytest.raises(PicoGPTError, match="sequence classifier"):
        C.Chat(picogpt.load_model(FIXTURES / "tiny-gpt2-cls"), tok)


@pytest.mark.gpu
def test_chat_on_the_gpu_replies_as_on_the_cpu(model, tok):
    cpu, _, _ = new_chat(model, tok)
    gpu, _, _ = new_chat(model.to("gpu"), tok)
    for text in ("Who is there?", "Nay, answer me."):
        assert gpu.reply(text) == cpu.reply(text)
