"""Supervised fine-tuning data: records -> tokens + a loss mask, the chat template, batches.

Records are JSON lines, one per line, in either of two shapes:

    {"prompt": "...", "response": "..."}
    {"messages": [{"role": "...", "content": "..."}, ...]}

Roles are free strings ("user" / "assistant", or speakers' names). A prompt/response record is
the two turns [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}].
Other keys (a play's name, a source) are allowed and ignored. Classification records are
{"text": "...", "label": "..."} (read by `read_classify_jsonl`).

The template (one for training, for `--show` and for chat)
    Every turn becomes the tokens of

        {role}:\\n{content}<|endoftext|>

    i.e. encode_ordinary(role + ":\\n") + encode_ordinary(content) + [50256]. The three pieces
    are encoded separately and concatenated, so the chat prompt (which ends with the responder's
    header "{role}:\\n") is token for token what training saw. Like DialoGPT, GPT-2's own
    <|endoftext|> closes every turn, so the model learns to stop with the token it already
    knows as "the text ends here". Content is stripped of surrounding whitespace; a literal
    "<|endoftext|>" inside content stays ordinary text (it is user data, not a control token).

Which turns are trained
    The responder is the role of the LAST turn. Every turn spoken by the responder is trained:
    its content tokens and the <|endoftext|> that closes it; its header "{role}:\\n" is not
    (the chat prompt supplies it). Every other turn is context only. A turn may say
    "train": true or false to override the rule. For a prompt/response record this trains
    exactly the response. A record with no trained token is an error.

Targets and the loss
    With ids (L,) and mask (L,) (mask[i]: token i is predicted in training), the inputs are
    ids[:-1] and the targets ids[1:], set to -100 (ignored) wherever mask[1:] is False. The
    loss is the mean cross-entropy over every trained target of a batch (the convention of
    transformers' Trainer and of model.loss_and_grads): an example weighs by its number of
    trained tokens, so a batch's loss is sum_i n_i loss_i / sum_i n_i.

On disk (`write_examples` / `load_examples`), one folder per dataset:
    {split}.ids.bin      every example's ids, concatenated (uint16: GPT-2 ids are < 65536)
    {split}.offsets.npy  int64 (n + 1,): example i is ids[offsets[i]:offsets[i + 1]]
    {split}.mask.bin     uint8, one per token: 1 = trained            (task "sft")
    {split}.labels.npy   int64 (n,): each example's label id           (task "classify")
    meta.json            task, tokenizer, dtype, template, labels, per-split counts
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PicoGPTError
from .files import atomic_open, make_folder, read_text, write_json

IGNORE_INDEX = -100
TEMPLATE = "{role}:\n{content}<|endoftext|>"
TEMPLATE_VERSION = 1


# --- reading records ---------------------------------------------------------------------

def read_jsonl(path):
    """[(line number, object)] for every non-blank line of a JSON-lines file; bad JSON names its line."""
    path = Path(path)
    text = read_text(path, "JSONL file")
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PicoGPTError(f"{path} line {n}: malformed JSON ({e.msg} at column {e.colno}).") from None
        if not isinstance(obj, dict):
            raise PicoGPTError(f"{path} line {n}: a record must be a JSON object, got {type(obj).__name__}.")
        out.append((n, obj))
    if not out:
        raise PicoGPTError(f"{path} holds no records: the dataset is empty.")
    return out


def _string(obj, key, where):
    if key not in obj:
        raise PicoGPTError(f"{where}: missing field {key!r}.")
    if not isinstance(obj[key], str):
        raise PicoGPTError(f"{where}: {key!r} must be a string, got {type(obj[key]).__name__}.")
    return obj[key]


def parse_record(obj, where="record"):
    """A record (either shape) -> its turns [{"role", "content", "train"}], checked.

    `where` ("FILE line N") starts every error message. "train" is True / False / None (the rule).
    """
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise PicoGPTError(f"{where}: 'messages' must be a non-empty list of turns.")
        turns = []
        for i, m in enumerate(msgs):
            at = f"{where}, turn {i + 1}"
            if not isinstance(m, dict):
                raise PicoGPTError(f"{at}: a turn must be an object with 'role' and 'content'.")
            role, content = _string(m, "role", at).strip(), _string(m, "content", at)
            if not role:
                raise PicoGPTError(f"{at}: 'role' is empty.")
            train = m.get("train")
            if train is not None and not isinstance(train, bool):
                raise PicoGPTError(f"{at}: 'train' must be true or false.")
            turns.append({"role": role, "content": content, "train": train})
        return turns
    if "prompt" in obj or "response" in obj:
        return [{"role": "user", "content": _string(obj, "prompt", where), "train": None},
                {"role": "assistant", "content": _string(obj, "response", where), "train": None}]
    raise PicoGPTError(f"{where}: missing field: give 'prompt' and 'response', or 'messages'.")


def trained_turns(turns):
    """Which turns are trained: the explicit "train" flag, else role == the last turn's role."""
    responder = turns[-1]["role"]
    return [t["role"] == responder if t.get("train") is None else t["train"] for t in turns]


def read_sft_jsonl(path):
    """Every record of an SFT JSONL file as its list of turns (checked, errors name the line)."""
    return [parse_record(obj, f"{path} line {n}") for n, obj in read_jsonl(path)]


def read_classify_jsonl(path, labels=None):
    """(texts, label ids, label names) of a {"text", "label"} JSONL file.

    labels: the known label names (e.g. the training set's or a model's); an unknown one is an
    error naming its line. Without them, the names are the sorted set of those in the file.
    A label may be a string or an integer (kept as its string).
    """
    rows = []
    for n, obj in read_jsonl(path):
        where = f"{path} line {n}"
        text = _string(obj, "text", where)
        if "label" not in obj:
            raise PicoGPTError(f"{where}: missing field 'label'.")
        label = obj["label"]
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise PicoGPTError(f"{where}: 'label' must be a string or an integer, got {type(label).__name__}.")
        rows.append((where, text, str(label)))
    names = list(labels) if labels is not None else sorted({r[2] for r in rows})
    index = {name: i for i, name in enumerate(names)}
    for where, _, label in rows:
        if label not in index:
            raise PicoGPTError(f"{where}: unknown label {label!r} (known: {', '.join(names)}).")
    return [r[1] for r in rows], [index[r[2]] for r in rows], names


# --- the template ------------------------------------------------------------------------

def _header(role, tok):
    return tok.encode_ordinary(f"{role}:\n")


def encode_turn(role, content, tok):
    """(header ids, body ids): "{role}:\\n" and content + <|endoftext|>."""
    return _header(role, tok), tok.encode_ordinary(content.strip()) + [tok.eot_token]


def encode_record(record, tok):
    """A record (a dict of either shape, or its parsed turns) -> (ids, loss_mask).

    ids int64 (L,), loss_mask bool (L,): True on the content and closing <|endoftext|> of every
    trained turn (see the module docstring), False on headers and on context turns.
    """
    turns = record if isinstance(record, list) else parse_record(record)
    ids, mask = [], []
    for turn, trained in zip(turns, trained_turns(turns)):
        head, body = encode_turn(turn["role"], turn["content"], tok)
        ids += head + body
        mask += [False] * len(head) + [trained] * len(body)
    if not any(mask):
        raise PicoGPTError("a record has no trained turn (every turn says \"train\": false).")
    return np.array(ids, dtype=np.int64), np.array(mask, dtype=bool)


def targets(ids, mask, ignore_index=IGNORE_INDEX):
    """Next-token inputs and targets of one example: x = ids[:-1], y = ids[1:] with -100 where
    mask[1:] is False. So only trained tokens are ever predicted. ids, mask (L,) -> x, y (L-1,)."""
    ids = np.asarray(ids, dtype=np.int64)
    return ids[:-1], np.where(np.asarray(mask[1:], dtype=bool), ids[1:], ignore_index)


def render(record, tok, open_mark="[[", close_mark="]]"):
    """The text the model sees, with each trained span wrapped in [[ ]] (for `--show`)."""
    ids, mask = encode_record(record, tok)
    out, start = [], 0
    edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1     # where trained/untrained switch
    for stop in list(edges) + [len(ids)]:
        text = tok.decode(ids[start:stop])
        out.append(f"{open_mark}{text}{close_mark}" if mask[start] else text)
        start = stop
    return "".join(out)


def show(path, tok, count=2):
    """The first `count` records of a file as the model sees them, with a count line each."""
    blocks = []
    for i, turns in enumerate(read_sft_jsonl(path)[:count]):
        ids, mask = encode_record(turns, tok)
        blocks.append(f"--- record {i + 1}: {len(ids)} tokens, {int(mask.sum())} trained (in [[ ]])\n"
                      + render(turns, tok))
    return "\n".join(blocks)


def chat_prompt(history, tok, n_ctx, max_new, responder="assistant"):
    """The prompt for the next reply: `history` (a list of {"role", "content"}) in the template,
    then the responder's header "{responder}:\\n", so the model writes the reply and closes it
    with <|endoftext|>.

    The oldest turns are dropped until prompt + max_new tokens fit in n_ctx.
    Returns (ids list, number of turns dropped). The newest turn is never dropped: if it alone
    does not fit, that is an error the user can fix (a shorter message, fewer new tokens).
    """
    pieces = [sum(encode_turn(t["role"], t["content"], tok), []) for t in history]
    tail = _header(responder, tok)
    budget = n_ctx - max_new - len(tail)
    dropped, used = 0, sum(len(p) for p in pieces)
    while used > budget and dropped < len(pieces) - 1:
        used -= len(pieces[dropped])
        dropped += 1
    if used > budget:
        raise PicoGPTError(f"the last message is {len(pieces[-1])} tokens; with {max_new} new tokens it does not fit "
                           f"the context of {n_ctx}: write a shorter message or ask for fewer new tokens.")
    return [i for p in pieces[dropped:] for i in p] + tail, dropped


# --- on disk -----------------------------------------------------------------------------

@dataclass
class Examples:
    """One split of a tokenised dataset: example i is ids[offsets[i]:offsets[i+1]], with its
    loss mask (SFT) or its label (classification)."""

    ids: np.ndarray          # (N,) uint16, every example's tokens concatenated
    offsets: np.ndarray      # (n + 1,) int64
    mask: np.ndarray = None  # (N,) uint8, 1 = trained token (SFT), else None
    labels: np.ndarray = None  # (n,) int64 (classification), else None
    meta: dict = None

    def __len__(self):
        return len(self.offsets) - 1

    def lengths(self):
        return np.diff(self.offsets)

    def __getitem__(self, i):
        """(ids int64 (L,), mask bool (L,) or None, label int or None) of example i."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        mask = None if self.mask is None else self.mask[a:b].astype(bool)
        label = None if self.labels is None else int(self.labels[i])
        return np.asarray(self.ids[a:b], dtype=np.int64), mask, label


def write_examples(out_dir, split, ids_list, masks=None, labels=None, task="sft", **meta):
    """Write one split (e.g. "train") of tokenised examples into out_dir and update meta.json.

    ids_list: a list of int arrays (the examples); masks: as many bool arrays (SFT) or None;
    labels: as many label ids (classification) or None. `meta` adds fields to meta.json
    (e.g. label_names=[...], source=...). Returns the meta dict.
    """
    out = make_folder(out_dir, "data folder")
    if not ids_list:
        raise PicoGPTError(f"the {split} split has no examples: the dataset is empty.")
    lengths = np.array([len(a) for a in ids_list], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.concatenate([np.asarray(a) for a in ids_list])
    if ids.min() < 0 or ids.max() >= 1 << 16:
        raise PicoGPTError("token ids must be in [0, 65536) to be stored as uint16.")
    files = {f"{split}.ids.bin": ids.astype(np.uint16).tobytes(), f"{split}.offsets.npy": offsets}
    counts = {"examples": len(ids_list), "tokens": int(len(ids)), "longest": int(lengths.max())}
    if masks is not None:
        mask = np.concatenate([np.asarray(m, dtype=np.uint8) for m in masks])
        files[f"{split}.mask.bin"] = mask.tobytes()
        counts["trained_tokens"] = int(mask.sum())
    if labels is not None:
        files[f"{split}.labels.npy"] = np.asarray(labels, dtype=np.int64)
    for name, data in files.items():
        with atomic_open(out / name) as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                np.save(f, data)
    path = out / "meta.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    if old.get("task") != task:
        old = {}  # another kind of dataset was here: start its meta afresh
    splits = {**old.get("splits", {}), split: counts}
    info = {"task": task, "tokenizer": "gpt2", "dtype": "uint16", **old, **meta, "splits": splits}
    if task == "sft":
        info["template"], info["template_version"] = TEMPLATE, TEMPLATE_VERSION
    write_json(path, info)
    return info


def read_meta(data_dir):
    """meta.json of a tokenised folder (its "task" is "sft", "classify", or absent for plain text)."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise PicoGPTError(f"{data_dir} has no meta.json: prepare it with `python -m picogpt.data`.")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PicoGPTError(f"{path} is not valid JSON ({e}).") from None


def load_examples(data_dir, split="train"):
    """One split of a folder written by write_examples, as Examples (ids memory-mapped)."""
    d = Path(data_dir)
    meta = read_meta(d)
    if meta.get("task") not in ("sft", "classify"):
        raise PicoGPTError(f"{d} holds plain text tokens, not examples (no sft/classify task in meta.json).")
    if split not in meta.get("splits", {}):
        raise PicoGPTError(f"{d} has no {split!r} split (it has: {', '.join(meta.get('splits', {})) or 'none'}).")
    try:
        offsets = np.load(d / f"{split}.offsets.npy")
        ids = np.memmap(d / f"{split}.ids.bin", dtype=np.uint16, mode="r")
        mask = np.fromfile(d / f"{split}.mask.bin", dtype=np.uint8) if meta["task"] == "sft" else None
        labels = np.load(d / f"{split}.labels.npy") if meta["task"] == "classify" else None
    except (OSError, ValueError) as e:
        raise PicoGPTError(f"{d}: the {split} split is missing or corrupt ({e}); prepare it again.") from None
    if offsets[-1] != len(ids) or (mask is not None and len(mask) != len(ids)) or \
            (labels is not None and len(labels) != len(offsets) - 1):
        raise PicoGPTError(f"{d}: the {split} split's files disagree in length; prepare it again.")
    return Examples(ids, offsets, mask, labels, meta)


# --- batches -----------------------------------------------------------------------------

class ExampleBatches:
    """Whole examples, shuffled once per epoch from the seed, padded into batches.

    Each epoch visits every example once in the order rng([seed, epoch]).permutation(n); the
    last batch of an epoch may be smaller. The state is (epoch, position), so a resumed run
    continues with exactly the batches it would have had (`state()` / `load_state()`).

    An example longer than block_size + 1 tokens keeps its last block_size + 1 (cut from the
    left, i.e. from the start of the prompt); `truncated` counts such examples in the dataset.

    next() returns, as int64 NumPy arrays, with T = the longest row of the batch:
        SFT:            x (B, T), y (B, T)   right-padded; padded targets are -100
        classification: x (B, T), lengths (B,), labels (B,)
    Right padding needs no attention mask: causal attention never lets a real token see the
    padding after it, so each row computes what it would alone.
    """

    def __init__(self, examples, batch_size, block_size, seed=0, pad_id=50256):
        if len(examples) == 0:
            raise PicoGPTError("the dataset has no examples.")
        self.examples, self.batch_size, self.block_size = examples, int(batch_size), int(block_size)
        self.seed, self.pad_id = int(seed), int(pad_id)
        self.classify = examples.labels is not None
        keep = self.block_size if self.classify else self.block_size + 1
        self.truncated = int((examples.lengths() > keep).sum())
        self.epoch, self.position = 0, 0
        self._order = None

    def __len__(self):
        """Batches per epoch."""
        return -(-len(self.examples) // self.batch_size)

    def order(self, epoch):
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def state(self):
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state(self, state):
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None

    def next_indices(self):
        """The example indices of the next batch; advances (epoch, position)."""
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, self.order(self.epoch))
        idx = self._order[1][self.position:self.position + self.batch_size]
        self.position += len(idx)
        if self.position >= len(self.examples):
            self.epoch, self.position = self.epoch + 1, 0
        return idx

    def next(self):
        rows = [self.examples[i] for i in self.next_indices()]
        if self.classify:
            ids = [r[0][-self.block_size:] for r in rows]
            x, lengths = pad_rows(ids, self.pad_id)
            return x, lengths, np.array([r[2] for r in rows], dtype=np.int64)
        pairs = [targets(r[0][-self.block_size - 1:], r[1][-self.block_size - 1:]) for r in rows]
        x, _ = pad_rows([p[0] for p in pairs], self.pad_id)
        y, _ = pad_rows([p[1] for p in pairs], IGNORE_INDEX)
        return x, y

    __next__ = next

    def __iter__(self):
        return self


def pad_rows(rows, value):
    """Right-pad int rows of different lengths to the longest: -> (array (B, T) int64, lengths (B,))."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    out = np.full((len(rows), int(lengths.max())), value, dtype=np.int64)
    for b, r in enumerate(rows):
        out[b, :len(r)] = r
    return out, lengths
