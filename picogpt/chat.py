"""`python -m picogpt.chat --model DIR`: talk to a model fine-tuned on conversations.

Each exchange is written in the SFT template (picogpt.sft): the history, turn by turn, as

    {role}:\\n{content}<|endoftext|>

then the bot's header "{bot}:\\n"; the model writes the reply and ends it with <|endoftext|>,
exactly as it learned in `python -m picogpt.train --data DIR` on `--task sft` data. Roles are
--user and --bot (default user / assistant; for the Shakespeare dialogue data, speakers' names
such as --user HAMLET --bot HORATIO).

    python -m picogpt.chat --model out/dialogue --user HAMLET --bot HORATIO
    printf 'Who is there?\\nWhat news?\\n' | python -m picogpt.chat --model out/dialogue --seed 0

Lines typed (or piped in) are the user's turns; `/reset` forgets the conversation, `/exit` (or
end of input) ends it. Replies stream as they are made; Ctrl-C stops a reply (what was written
so far is kept as the reply), not the session. When the conversation no longer fits the
context with room for --max-new-tokens, the oldest turns are dropped (said once, on stderr).
`--stop TEXT` (generate's option) also ends a reply, e.g. --stop $'\n\n' for a model that has not
yet learned to close its turns with <|endoftext|>; the history keeps the text before it.
With the input piped in, each user line is echoed, so stdout is the whole transcript.
"""

import argparse
import sys

from . import sft
from .cli import run_command
from .errors import PicoGPTError
from .generate import add_decoding_arguments, decoding_options
from .generation import cut_at_stop, generate
from .heads import check_language_model
from .sampling import check_sampling_args
from .tokenizers import get_tokenizer
from .weights import load_model

COMMANDS = {"/reset": "forget the conversation", "/exit": "end the session"}


class Chat:
    """A conversation with a model: `reply(text)` adds the user's turn, streams the bot's reply
    to `out` and returns it. `history` is the turns still in the context ({"role", "content"})."""

    def __init__(self, model, tok, user="user", bot="assistant", max_new_tokens=100, out=sys.stdout,
                 err=sys.stderr, seed=None, **options):
        check_language_model(model, "the model")
        if tok.eot_token is None:
            raise PicoGPTError("the model's tokenizer has no <|endoftext|> token, which the chat template ends "
                               "every turn with: chat needs a GPT-2-vocabulary model fine-tuned with --task sft.")
        self.model, self.tok, self.user, self.bot = model, tok, user, bot
        self.max_new_tokens, self.out, self.err, self.seed = max_new_tokens, out, err, seed
        self.options = options       # generate's keywords: temperature, top_k, top_p, repetition_penalty...
        self.history, self.turns, self.told_dropping = [], 0, False

    def reset(self):
        self.history = []

    def prompt(self):
        """The ids of the history + the bot's header; drops the oldest turns that do not fit."""
        ids, dropped = sft.chat_prompt(self.history, self.tok, self.model.config.n_ctx, self.max_new_tokens,
                                       responder=self.bot)
        if dropped:
            del self.history[:dropped]
            if not self.told_dropping:
                print(f"[the conversation is longer than the model's context of {self.model.config.n_ctx} tokens: "
                      "its oldest turns are dropped from now on]", file=self.err, flush=True)
                self.told_dropping = True
        return ids

    def reply(self, text):
        """Add the user's turn, write the bot's reply as it is made, and return it (a string)."""
        self.history.append({"role": self.user, "content": text})
        try:
            ids = self.prompt()
        except PicoGPTError:
            self.history.pop()   # a message too long to answer is not kept
            raise
        made, decode = [], self.tok.stream_decoder()
        eot = self.tok.eot_token
        held = []   # whitespace not yet printed: shown once more text follows, dropped at the reply's end

        def on_token(step, tokens):
            if tokens[0] != eot:
                made.append(int(tokens[0]))
                held.append(decode([tokens[0]]))
                if "".join(held).strip():
                    self.out.write("".join(held))
                    self.out.flush()
                    held.clear()

        self.out.write(f"{self.bot}: ")
        self.out.flush()
        seed = None if self.seed is None else (self.seed, self.turns)   # each reply its own stream
        self.turns += 1
        try:
            generate(self.model, [ids], self.max_new_tokens, seed=seed, eot_token=eot, on_token=on_token,
                     tokenizer=self.tok, **self.options)
        except KeyboardInterrupt:   # Ctrl-C stops this reply, not the session
            self.out.write(" [stopped]")
        self.out.write(decode([]).rstrip() + "\n")
        self.out.flush()
        text = cut_at_stop(self.tok.decode(made), self.options.get("stop")).strip()   # --stop ends a reply too
        self.history.append({"role": self.bot, "content": text})
        return text


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m picogpt.chat", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Talk to a model fine-tuned on conversations (python -m picogpt.train on --task sft data). "
                    "Type a line and press Enter; /reset forgets the conversation, /exit ends it. "
                    "Turns can also be piped in, one per line.",
        epilog="examples:\n"
               "  python -m picogpt.chat --model out/dialogue --user HAMLET --bot HORATIO\n"
               "  printf 'Who is there?\\nWhat news?\\n' | python -m picogpt.chat --model out/dialogue --seed 0")
    p.add_argument("--model", default=None, metavar="NAME|DIR",
                   help="a checkpoint folder fine-tuned on conversations (default: the bundled model, which was not)")
    p.add_argument("--user", default="user", metavar="NAME", help="the role of your turns (default user)")
    p.add_argument("--bot", default="assistant", metavar="NAME", help="the role of the model's turns (default assistant)")
    p.add_argument("--max-new-tokens", type=int, default=100, metavar="N", help="tokens per reply at most (default 100)")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T", help="sampling temperature; 0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=200, metavar="K", help="sample among the K most likely tokens (default 200; 0 = off)")
    p.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling (default off)")
    p.add_argument("--seed", type=int, default=None, help="random seed >= 0: the same conversation gets the same replies")
    p.add_argument("--device", default=None, choices=["cpu", "gpu"], help="where to run (default: $PICOGPT_DEVICE or cpu)")
    add_decoding_arguments(p)
    return p


def main(argv=None):
    return run_command(run, build_parser().parse_args(argv), interrupted="bye.")


def run(args, stdin=None, stdout=None, stderr=None):
    stdin, out, err = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    if args.max_new_tokens < 1:
        raise PicoGPTError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}.")
    if args.seed is not None and args.seed < 0:
        raise PicoGPTError(f"--seed must be a whole number >= 0, got {args.seed}.")
    if not args.user.strip() or not args.bot.strip() or args.user.strip() == args.bot.strip():
        raise PicoGPTError("--user and --bot must be two different, non-empty names.")
    top_k = args.top_k or None
    check_sampling_args(args.temperature, top_k, args.top_p)
    options = dict(decoding_options(args), temperature=args.temperature, top_k=top_k, top_p=args.top_p)
    if options.pop("num_return_sequences") != 1:
        raise PicoGPTError("chat writes one reply per turn: leave --num-return-sequences at 1.")
    model = load_model(args.model, device=args.device)
    check_language_model(model, args.model or "the bundled model")
    chat = Chat(model, get_tokenizer(model), args.user.strip(), args.bot.strip(), args.max_new_tokens, out, err,
                args.seed, **options)
    piped = not stdin.isatty()
    if not piped:
        print(f"chatting with {args.model or 'the bundled model'} as {chat.user}; the model is {chat.bot}. "
              f"{'; '.join(f'{k}: {v}' for k, v in COMMANDS.items())}.", file=err)
    while True:
        if not piped:
            err.write(f"{chat.user}> ")
            err.flush()
        line = stdin.readline()
        if not line:   # end of input
            break
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            chat.reset()
            print("[the conversation is forgotten]", file=err)
            continue
        if piped:
            out.write(f"{chat.user}: {text}\n")
        try:
            chat.reply(text)
        except PicoGPTError as e:   # a message too long: say so and go on
            print(f"error: {e}", file=err)


if __name__ == "__main__":
    sys.exit(main())
