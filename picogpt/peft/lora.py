"""LoRA: low-rank adapters for fine-tuning with the base weights frozen (Hu et al., 2021).

A projection y = x W + b gets an adapter of rank r:

    y = x W + b + (alpha / r) * (x A) B         A (in, r), B (r, out)

A starts random and B at zero, so training starts exactly at the base model. Only A and B are
trained: r (in + out) numbers per projection instead of in * out. The forward and backward live
in model._linear / model._linear_backward (two more linear ops); this file adds, removes, saves
and merges the adapters. Adapter names sit beside the weight they adapt:
`h.0.attn.c_attn.lora_A`, `h.0.attn.c_attn.lora_B`.
"""

import json
from pathlib import Path

import numpy as np

from .. import safetensors
from ..backend import asnumpy
from ..errors import PicoGPTError
from ..model import GPT2, LORA_SUFFIXES
from . import remove_params

DEFAULT_TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def lora_names(params):
    """The adapter parameter names present in `params`."""
    return [k for k in params if k.endswith(LORA_SUFFIXES)]


def add_lora(model, rank=8, alpha=None, targets=DEFAULT_TARGETS, seed=0):
    """Attach rank-`rank` adapters to the `targets` projections of every block, in place.

    alpha defaults to rank (scale 1). A ~ N(0, 1/in), B = 0. Returns the adapter names.
    """
    if int(rank) != rank or rank < 1:
        raise PicoGPTError(f"the LoRA rank must be a whole number >= 1, got {rank}.")
    unknown = [t for t in targets if t not in DEFAULT_TARGETS]
    if unknown:
        raise PicoGPTError(f"unknown LoRA target {unknown[0]!r}: choose from {', '.join(DEFAULT_TARGETS)}.")
    if lora_names(model.params):
        raise PicoGPTError("this model already has LoRA adapters: merge or remove them first.")
    rng = np.random.default_rng(seed)
    xp, dtype = model.xp, model.dtype
    names = []
    for i in range(model.config.n_layer):
        for t in targets:
            name = f"h.{i}.{t}"
            n_in, n_out = model.params[name + ".weight"].shape
            model.params[name + ".lora_A"] = xp.asarray(rng.normal(0.0, n_in ** -0.5, (n_in, rank)).astype(dtype))
            model.params[name + ".lora_B"] = xp.zeros((rank, n_out), dtype=dtype)
            names += [name + ".lora_A", name + ".lora_B"]
    alpha = float(alpha if alpha is not None else rank)
    model.lora_scale = alpha / int(rank)   # a Python float: a NumPy scalar would upcast the forward
    model.lora = {"rank": int(rank), "alpha": alpha, "targets": list(targets)}
    return names


def remove_lora(model):
    """Drop the adapters from `model`, in place: it is the base model again, its weights untouched.
    Returns the names of the adapter parameters removed."""
    names = remove_params(model, lora_names(model.params), "LoRA adapters")
    model.lora_scale, model.lora = 1.0, None
    return names


def merge_lora(model):
    """A new GPT2 whose weights include the adapters (W + scale * A B) and which has none."""
    params = {k: a for k, a in model.params.items() if not k.endswith(LORA_SUFFIXES)}
    for k in lora_names(model.params):
        if k.endswith(".lora_A"):
            base = k[:-len(".lora_A")]
            delta = model.params[k] @ model.params[base + ".lora_B"]
            params[base + ".weight"] = params[base + ".weight"] + model.lora_scale * delta
    return GPT2(model.config, params, device=model.device, tokenizer=model.tokenizer)


def save_adapters(model, path):
    """Write only the adapters (and rank, alpha, targets) to one .safetensors file, picogpt's own
    format. For peft's folder (adapter_config.json + adapter_model.safetensors), which peft and
    picogpt both read, use picogpt.save_adapters(model, folder)."""
    names = lora_names(model.params)
    if not names:
        raise PicoGPTError("this model has no LoRA adapters to save.")
    meta = {"lora": json.dumps(model.lora or {"rank": int(model.params[names[0]].shape[1])}),
            "lora_scale": repr(model.lora_scale), "n_layer": str(model.config.n_layer), "n_embd": str(model.config.n_embd)}
    safetensors.save({k: asnumpy(model.params[k]) for k in names}, Path(path), metadata=meta)
    return Path(path)


def load_adapters(model, path):
    """Attach adapters saved by `save_adapters` to `model` (which must have the same shape)."""
    header, meta, _ = safetensors.read_header(path)
    if "lora_scale" not in meta:
        raise PicoGPTError(f"{path} is not a picogpt LoRA adapter file.")
    if int(meta["n_embd"]) != model.config.n_embd or int(meta["n_layer"]) != model.config.n_layer:
        raise PicoGPTError(f"{path} was made for a model with n_layer={meta['n_layer']}, n_embd={meta['n_embd']}.")
    if lora_names(model.params):
        raise PicoGPTError("this model already has LoRA adapters: merge or remove them first.")
    for k, a in safetensors.load(path).items():
        model.params[k] = model.xp.asarray(np.array(a, dtype=model.dtype))  # copy: read-only mmap
    model.lora_scale = float(meta["lora_scale"])
    model.lora = json.loads(meta["lora"])
    return model
