"""GPT2Config and the named presets.

The four OpenAI sizes, plus small configs for tests and classes. Field names follow
Hugging Face's GPT2Config where they exist (n_layer, n_head, n_embd, vocab_size), except that
picogpt calls the context length `n_ctx` (Hugging Face: `n_positions`).

nanoGPT's two model options are fields too, GPT-2's by default: `bias` (False: no biases in the
linear layers and layer norms; config.json "bias": false, a key of picogpt's own, since
transformers' GPT-2 always has biases) and `gelu` ("tanh", GPT-2's approximation, config.json
activation_function "gelu_new"; "exact", the erf form, which transformers calls "gelu").

A sequence classifier (transformers' GPT2ForSequenceClassification) is a GPT2Config with
`labels`, its label names in id order (config.json: id2label / label2id, num_labels), and the
`pad_token_id` transformers uses to find each row's last real token.
"""

from dataclasses import asdict, dataclass, fields

from .errors import PicoGPTError


@dataclass(frozen=True)
class GPT2Config:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_ctx: int = 1024          # context length: how many positions `wpe` has
    vocab_size: int = 50257
    layer_norm_epsilon: float = 1e-5
    dropout: float = 0.0       # one rate for embeddings, attention probabilities and residuals
    labels: tuple = ()         # a classifier's label names in id order; () = a language model
    pad_token_id: int | None = None   # a classifier's padding token (transformers' rule for "last token")
    bias: bool = True          # False: no biases in linear layers and layer norms (nanoGPT's bias=False)
    gelu: str = "tanh"         # tanh: GPT-2's approximation (gelu_new); exact: the erf form (transformers' "gelu")
    # --- compress: head pruning (picogpt/prune.py) ---
    # pruned_heads[i]: the heads removed from layer i, by their original index (transformers'
    # config.pruned_heads); () = none. head_dim stays n_embd // n_head; layer i keeps heads(i).
    pruned_heads: tuple = ()

    def __post_init__(self):
        # Plain Python numbers: a NumPy float64 scalar here would upcast float32 maths to float64.
        for name in ("layer_norm_epsilon", "dropout"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("n_layer", "n_head", "n_embd", "n_ctx", "vocab_size"):
            object.__setattr__(self, name, int(getattr(self, name)))
            if getattr(self, name) < 1:
                raise PicoGPTError(f"config {name} must be a positive integer, got {getattr(self, name)}.")
        if self.n_embd % self.n_head:
            raise PicoGPTError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}).")
        if not 0.0 <= self.dropout < 1.0:
            raise PicoGPTError(f"dropout must be in [0, 1), got {self.dropout}.")
        object.__setattr__(self, "labels", tuple(str(x) for x in self.labels))
        if len(set(self.labels)) != len(self.labels) or len(self.labels) == 1:
            raise PicoGPTError(f"a classifier needs at least 2 distinct label names, got {list(self.labels)}.")
        if self.pad_token_id is not None:
            object.__setattr__(self, "pad_token_id", int(self.pad_token_id))
        if not isinstance(self.bias, bool):
            raise PicoGPTError(f"config bias must be true or false, got {self.bias!r}.")
        if self.gelu not in GELU_ACTIVATIONS:
            raise PicoGPTError(f"config gelu must be one of {', '.join(GELU_ACTIVATIONS)}, got {self.gelu!r}.")
        self._check_pruned_heads()

    def _check_pruned_heads(self):
        """pruned_heads as a tuple (one entry per layer) of sorted tuples of head indices; a
        dict {layer: [heads]} (transformers' config.json) is accepted too."""
        ph = self.pruned_heads or ()
        if isinstance(ph, dict):
            ph = [ph.get(i, ph.get(str(i), ())) for i in range(self.n_layer)]
        ph = tuple(tuple(sorted(int(h) for h in heads)) for heads in ph)
        if ph and len(ph) != self.n_layer:
            raise PicoGPTError(f"config pruned_heads must have one entry per layer ({self.n_layer}), got {len(ph)}.")
        for i, heads in enumerate(ph):
            if len(set(heads)) != len(heads) or any(not 0 <= h < self.n_head for h in heads) or len(heads) >= self.n_head:
                raise PicoGPTError(f"config pruned_heads: layer {i} must keep at least one of its {self.n_head} heads "
                                   f"and name each removed head once, got {list(heads)}.")
        object.__setattr__(self, "pruned_heads", ph if any(ph) else ())

    def heads(self, i):
        """How many attention heads layer i has (n_head unless some were pruned)."""
        return self.n_head - (len(self.pruned_heads[i]) if self.pruned_heads else 0)

    @property
    def num_labels(self):
        """How many classes a classifier has (0 for a language model)."""
        return len(self.labels)

    @property
    def id2label(self):
        return {i: name for i, name in enumerate(self.labels)}

    @property
    def label2id(self):
        return {name: i for i, name in enumerate(self.labels)}

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    def replace(self, **changes):
        return GPT2Config(**{**asdict(self), **changes})

    def num_params(self):
        """Parameter count with the LM head tied to `wte` (so it is counted once)."""
        C, L = self.n_embd, self.n_layer
        b = int(self.bias)   # biases of the four projections and the layer norms' shifts
        per_block = 2 * (1 + b) * C + (C * 3 * C + b * 3 * C) + (C * C + b * C) + (C * 4 * C + b * 4 * C) + (4 * C * C + b * C)
        removed = sum(self.n_head - self.heads(i) for i in range(L)) * self.head_dim   # pruned heads' channels
        per_channel = 3 * C + 3 * b + C    # a head channel: its q, k, v columns (+ biases) and its c_proj row
        return self.vocab_size * C + self.n_ctx * C + L * per_block + (1 + b) * C - removed * per_channel

    # --- Hugging Face config.json --------------------------------------------------------
    def to_hf_dict(self):
        """The config.json that transformers' GPT2LMHeadModel.from_pretrained understands, or for a
        classifier GPT2ForSequenceClassification's (with id2label, label2id, pad_token_id)."""
        d = {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "activation_function": GELU_ACTIVATIONS[self.gelu],
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_embd": self.n_embd,
            "n_positions": self.n_ctx,
            "n_ctx": self.n_ctx,
            "vocab_size": self.vocab_size,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "n_inner": None,
            "attn_pdrop": self.dropout,
            "embd_pdrop": self.dropout,
            "resid_pdrop": self.dropout,
            "scale_attn_weights": True,
            "tie_word_embeddings": True,
            # GPT-2's <|endoftext|>; a model with a smaller vocabulary has no such token.
            "bos_token_id": 50256 if self.vocab_size > 50256 else None,
            "eos_token_id": 50256 if self.vocab_size > 50256 else None,
        }
        if self.pruned_heads:   # transformers' own key: from_pretrained prunes these heads before loading
            d["pruned_heads"] = {str(i): list(h) for i, h in enumerate(self.pruned_heads) if h}
        if not self.bias:   # picogpt's own key: transformers' GPT-2 always has biases (it ignores this)
            d["bias"] = False
        if self.labels:
            d.update(label_fields(self.labels, self.pad_token_id))
        return d

    @classmethod
    def from_hf_dict(cls, d):
        """Read a Hugging Face GPT-2 config.json (or picogpt's own, which is the same)."""
        if d.get("model_type", "gpt2") != "gpt2":
            raise PicoGPTError(f"config.json describes a {d.get('model_type')!r} model, not GPT-2.")
        act = d.get("activation_function", "gelu_new")
        gelu = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}.get(act)
        if gelu is None:
            raise PicoGPTError(f"unsupported activation {act!r}: picogpt implements GELU, as gelu_new (tanh) or gelu (exact).")
        if d.get("n_inner") not in (None, 4 * d.get("n_embd", 768)):
            raise PicoGPTError("unsupported n_inner: picogpt's MLP is 4 * n_embd wide, as in GPT-2.")
        known = {f.name for f in fields(cls)}
        args = {k: d[k] for k in ("n_layer", "n_head", "n_embd", "vocab_size", "layer_norm_epsilon") if k in d}
        args["n_ctx"] = d.get("n_positions", d.get("n_ctx", 1024))
        args["gelu"], args["bias"] = gelu, d.get("bias", True)
        args["pruned_heads"] = d.get("pruned_heads") or ()
        # transformers writes id2label (LABEL_0, LABEL_1) into every config; only a sequence
        # classifier's labels are the model's classes.
        if "GPT2ForSequenceClassification" in (d.get("architectures") or []):
            args["labels"] = labels_from_hf_dict(d) or ()
            args["pad_token_id"] = d.get("pad_token_id")
        return cls(**{k: v for k, v in args.items() if k in known})


# config.gelu -> transformers' activation_function of the same function
GELU_ACTIVATIONS = {"tanh": "gelu_new", "exact": "gelu"}


def label_fields(labels, pad_token_id=50256):
    """The config.json fields of a classifier with these label names (in id order):
    id2label {"0": name, ...} (JSON keys are strings), label2id {name: 0, ...}, pad_token_id
    and the architecture name, as transformers writes them."""
    labels = [str(x) for x in labels]
    if len(set(labels)) != len(labels):
        raise PicoGPTError(f"label names must be distinct, got {labels}.")
    return {"architectures": ["GPT2ForSequenceClassification"],
            "id2label": {str(i): name for i, name in enumerate(labels)},
            "label2id": {name: i for i, name in enumerate(labels)},
            "pad_token_id": pad_token_id}


def labels_from_hf_dict(d):
    """The label names (a list, in id order) of a config.json dict, or None if it has none.

    transformers always writes id2label (LABEL_0, LABEL_1 by default); keys may be "0" or 0.
    """
    id2label = d.get("id2label")
    if not id2label:
        return None
    try:
        pairs = sorted((int(k), str(v)) for k, v in id2label.items())
    except (TypeError, ValueError, AttributeError):
        raise PicoGPTError("config.json: id2label must map label ids (0, 1, ...) to names.") from None
    if [k for k, _ in pairs] != list(range(len(pairs))):
        raise PicoGPTError("config.json: id2label's ids must be 0, 1, ..., num_labels - 1.")
    names = [v for _, v in pairs]
    label2id = d.get("label2id")
    if label2id and {str(k): int(v) for k, v in label2id.items()} != {n: i for i, n in enumerate(names)}:
        raise PicoGPTError("config.json: label2id does not agree with id2label.")
    return names


PRESETS = {
    # OpenAI's four GPT-2 sizes (parameter counts with the tied head).
    "gpt2": GPT2Config(n_layer=12, n_head=12, n_embd=768),           # 124M
    "gpt2-medium": GPT2Config(n_layer=24, n_head=16, n_embd=1024),   # 355M
    "gpt2-large": GPT2Config(n_layer=36, n_head=20, n_embd=1280),    # 774M
    "gpt2-xl": GPT2Config(n_layer=48, n_head=25, n_embd=1600),       # 1558M
    # Small models for classes, tests and the bundled Shakespeare model.
    "gpt2-mini": GPT2Config(n_layer=6, n_head=6, n_embd=384, n_ctx=256),
    "gpt2-tiny": GPT2Config(n_layer=4, n_head=4, n_embd=256, n_ctx=256),
    "gpt2-micro": GPT2Config(n_layer=2, n_head=2, n_embd=64, n_ctx=128),
}

# The names OpenAI used when it released the checkpoints.
ALIASES = {"124M": "gpt2", "355M": "gpt2-medium", "774M": "gpt2-large", "1558M": "gpt2-xl"}

# The sizes that exist as real checkpoints on the Hugging Face Hub.
HUB_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def hub_model_names():
    """'gpt2, gpt2-medium, gpt2-large, gpt2-xl (or 124M, 355M, 774M, 1558M)', for messages."""
    aliases = ", ".join(k for k, v in ALIASES.items() if v in HUB_MODELS)
    return f"{', '.join(HUB_MODELS)} (or {aliases})"


def canonical_name(name):
    """'124M' -> 'gpt2'; a known name -> itself; anything else -> None."""
    name = ALIASES.get(name, name)
    return name if name in PRESETS else None


def get_config(name, **overrides):
    """A preset by name (or alias), optionally with fields changed: get_config('gpt2-tiny', n_ctx=128)."""
    canon = canonical_name(name)
    if canon is None:
        choices = ", ".join(list(PRESETS) + list(ALIASES))
        raise PicoGPTError(f"unknown model config {name!r}: choose one of {choices}.")
    return PRESETS[canon].replace(**overrides) if overrides else PRESETS[canon]
