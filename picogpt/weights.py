"""Checkpoints: find, load, convert and save GPT-2 weights.

A checkpoint is a folder with `config.json` and `model.safetensors`, in Hugging Face's layout,
so the Hub's files load as they are and what `save_model` writes loads in transformers.

Loading accepts both layouts the Hub has used:
- `openai-community/gpt2`'s own file: keys without a prefix (`h.0.attn.c_attn.weight`), no
  `lm_head.weight` (tied), and the causal-mask buffers `h.N.attn.bias` / `h.N.attn.masked_bias`,
  which are constants, not parameters, and are skipped;
- files from newer `save_pretrained`: keys prefixed `transformer.`, maybe `lm_head.weight`.
Careful: `h.N.attn.c_attn.bias` is a real parameter; only the exact `h.N.attn.bias` is a mask.

A sequence classifier (transformers' GPT2ForSequenceClassification: config.json with
id2label / label2id, architecture GPT2ForSequenceClassification) has one more tensor,
`score.weight` (num_labels, C), and loads as a picogpt.heads.GPT2Classifier.
"""

import json
import re
from pathlib import Path

import numpy as np

from . import safetensors
from .backend import asnumpy, resolve_device, xp_for
from .config import HUB_MODELS, PRESETS, GPT2Config, canonical_name, get_config, hub_model_names
from .hub import download
from .dtypes import resolve_dtype
from .errors import PicoGPTError
from .files import write_json
from .heads import SCORE, GPT2Classifier
from .model import GPT2, LORA_SUFFIXES, init_params, param_shapes
from .paths import weights_dir  # noqa: F401 (also picogpt.weights.weights_dir, as before)
from .peft.formats import attach_run_adapters
from .tokenizers import TOKENIZER_FILE, read_tokenizer, write_tokenizer

BUNDLED = Path(__file__).parent / "assets" / "shakespeare"
BUNDLED_NAME = "shakespeare"   # --model shakespeare / --init shakespeare: the bundled model
_MASK_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")


def _hub_key(name):
    """A Hub tensor name -> picogpt's name, or None for what is not a parameter."""
    if name.startswith("transformer."):
        name = name[len("transformer."):]
    if _MASK_BUFFER.match(name) or name == "lm_head.weight":
        return None  # causal-mask constants; the LM head is tied to wte
    return name


def read_config(folder):
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise PicoGPTError(f"{folder} has no config.json: it is not a GPT-2 checkpoint folder.")
    try:
        d = json.loads(path.read_text())
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        missing = [k for k in ("n_layer", "n_head", "n_embd") if k not in d]
        if missing:  # a default (768 wide...) would only fail later, blaming another field
            raise ValueError(f"it lacks {', '.join(missing)}, which give the model's size")
        return GPT2Config.from_hf_dict(d)
    except (OSError, TypeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise PicoGPTError(f"{path} is not a valid GPT-2 config ({e}).") from None


def load_params(folder, config, device="cpu", dtype="float32"):
    """The parameter dict of the checkpoint in `folder`, checked against `config`."""
    path = Path(folder) / "model.safetensors"
    raw = safetensors.load(path)
    params = {}
    for name, a in raw.items():
        key = _hub_key(name)
        if key is not None:
            params[key] = a
    expected = param_shapes(config)
    if config.labels:  # a classifier: transformers' head, torch's (out, in) layout
        expected[SCORE] = (config.num_labels, config.n_embd)
    missing = [k for k in expected if k not in params]
    if missing:
        raise PicoGPTError(f"{path} lacks {len(missing)} GPT-2 parameters (first: {missing[0]!r}): it is not a complete GPT-2 checkpoint.")
    for k, shape in expected.items():
        if tuple(params[k].shape) != shape:
            raise PicoGPTError(f"{path}: {k!r} has shape {tuple(params[k].shape)}, but config.json implies {shape}.")
    unknown = [k for k in params if k not in expected]
    if unknown:
        raise PicoGPTError(f"{path} holds tensors GPT-2 does not have (first: {unknown[0]!r}).")
    xp = xp_for(device)
    out = {}
    for k in expected:
        a = np.asarray(params[k])
        if not np.isfinite(a).all():
            raise PicoGPTError(f"{path}: {k!r} contains NaN or infinite values; the checkpoint is corrupt.")
        out[k] = xp.asarray(a.astype(dtype))
    return out


def save_model(model, folder, dtype=None, tokenizer=None):
    """Write `config.json` + `model.safetensors` (keys prefixed `transformer.`, as
    save_pretrained writes them) that transformers' GPT2LMHeadModel.from_pretrained loads
    (a classifier: GPT2ForSequenceClassification, with `score.weight` and its labels), and the
    model's tokenizer (default `model.tokenizer`) as `tokenizer.json` unless it is GPT-2's.

    dtype: store as 'float16' to halve the file (loading converts back). LoRA adapters are
    not written here: merge them first, or save them with `picogpt.lora.save_adapters`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, a in model.params.items():
        if k.endswith(LORA_SUFFIXES):
            continue
        a = asnumpy(a)
        tensors[k if k == SCORE else "transformer." + k] = a.astype(dtype) if dtype else a
    safetensors.save(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    cfg = model.config.to_hf_dict()
    cfg["torch_dtype"] = str(np.dtype(dtype or model.dtype))
    write_json(folder / "config.json", cfg)
    write_tokenizer(tokenizer or getattr(model, "tokenizer", None), folder)
    return folder


def find_checkpoint(name):
    """A model name, alias or folder -> the folder holding it (downloading Hub models)."""
    path = Path(name) if name is not None else None
    # A folder wins over a name, unless it is not a checkpoint and the name is one (an empty
    # weights/gpt2/ left by a failed download must not hide the Hub's gpt2).
    if path is not None and path.is_dir() and ((path / "config.json").is_file() or not _is_model_name(name)):
        return path
    if name is None or str(name) == BUNDLED_NAME:
        if not (BUNDLED / "model.safetensors").is_file():
            raise PicoGPTError(f"the bundled model is missing from {BUNDLED}: reinstall picogpt.")
        return BUNDLED
    canon = canonical_name(str(name))
    if canon in HUB_MODELS:
        folder = weights_dir() / canon
        if not (folder / "model.safetensors").is_file() or not (folder / "config.json").is_file():
            download(canon)
        return folder
    if canon in PRESETS:
        raise PicoGPTError(f"{name!r} is a config without released weights: use picogpt.init_model({name!r}) for a randomly initialised one.")
    if path.exists():
        raise PicoGPTError(f"{name} is a file: give the checkpoint folder that holds config.json and model.safetensors.")
    if any(sep in str(name) for sep in "/\\") or str(name).startswith((".", "~")):
        raise PicoGPTError(f"there is no folder {name}: give an existing checkpoint folder, or a model name "
                           f"({BUNDLED_NAME}, {hub_model_names()}).")
    raise PicoGPTError(f"unknown model {name!r}: give {BUNDLED_NAME} (the bundled model), one of {hub_model_names()}, "
                       "or a checkpoint folder.")


def _is_model_name(name):
    """True for the names find_checkpoint knows without a folder: shakespeare and the Hub's."""
    return str(name) == BUNDLED_NAME or canonical_name(str(name)) in HUB_MODELS


def load_model(name=None, device=None, dtype="float32"):
    """A GPT2 from a name ('gpt2', '124M', ...), a checkpoint folder, or None (or 'shakespeare')
    for the bundled Shakespeare model. Hub models are downloaded into weights/ on first use."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    folder = find_checkpoint(name)
    config = read_config(folder)
    cls = GPT2Classifier if config.labels else GPT2
    model = cls(config, load_params(folder, config, device, dtype), device=device)
    model.tokenizer = read_tokenizer(folder)
    # (GPT-2's is not checked: small test models borrow its ids without all of its tokens)
    if (folder / TOKENIZER_FILE).is_file() and model.tokenizer.n_vocab > config.vocab_size:
        raise PicoGPTError(f"{folder}'s tokenizer has {model.tokenizer.n_vocab:,} tokens but its model only "
                           f"{config.vocab_size:,}: the tokenizer.json belongs to another model.")
    return attach_run_adapters(model, folder)   # a prefix or adapter run's adapter/


def init_model(config="gpt2-tiny", device=None, dtype="float32", seed=0, **overrides):
    """A randomly initialised GPT2 from a preset name or a GPT2Config (GPT-2's init scheme)."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if not isinstance(config, GPT2Config):
        config = get_config(config)
    if overrides:
        config = config.replace(**overrides)
    return GPT2(config, init_params(config, xp_for(device), dtype, seed), device=device)
