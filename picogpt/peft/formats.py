"""save_adapters / load_adapters: a folder of adapter_config.json + adapter_model.safetensors.

LoRA and prefix-tuning use Hugging Face peft's own layout, so a folder moves between picogpt and
`peft.PeftModel.from_pretrained(GPT2LMHeadModel, folder)` both ways:

  LoRA     "peft_type": "LORA"; tensors base_model.model.transformer.h.{i}.{attn.c_attn, attn.c_proj,
           mlp.c_fc, mlp.c_proj}.lora_A.weight (r, in) and .lora_B.weight (out, r): torch Linear's
           (out, in) layout, the transposes of picogpt's A (in, r) and B (r, out). Scale alpha / r
           (alpha / sqrt(r) with use_rslora). fan_in_fan_out=True (GPT-2's Conv1D) changes only how
           peft merges, not these tensors.
  prefix   "peft_type": "PREFIX_TUNING"; one tensor prompt_embeddings (P, 2 L C), picogpt's
           prefix.kv unchanged (the MLP of prefix_projection is never saved, by peft either: its
           output is).

Bottleneck adapters have no peft type, so picogpt writes its own in the same folder layout:
"peft_type": "PICOGPT_BOTTLENECK" (peft refuses it; picogpt reads it), "adapter_size", "kind"
(houlsby | pfeiffer), "non_linearity": "gelu_new", and the tensors under picogpt's names
(h.{i}.adapter_mlp.down.weight (C, M), ...), Conv1D's (in, out) layout.

Loading refuses adapters made for a model of another shape: LoRA tensors are checked against the
projections they adapt; prefix folders record peft's num_layers / token_dim / num_attention_heads,
bottleneck folders picogpt's n_layer / n_embd.
"""

import json
import re
from pathlib import Path

import numpy as np

from .. import safetensors
from ..backend import asnumpy
from ..errors import PicoGPTError
from ..files import make_folder, write_json
from . import adapters as AD
from . import lora as LO
from . import prefix as PX

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model.transformer."
BOTTLENECK = "PICOGPT_BOTTLENECK"
_LORA_KEY = re.compile(r"h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.lora_([AB])\.weight")


def attached(model):
    """Which methods `model` carries: a list of 'lora', 'prefix', 'bottleneck'."""
    p = model.params
    return [m for m, names in (("lora", LO.lora_names(p)), ("prefix", PX.prefix_names(p)),
                               ("bottleneck", AD.adapter_names(p))) if names]


# --- writing ---------------------------------------------------------------------------------

def save_adapters(model, folder, base_model_name_or_path=None):
    """Write the one method attached to `model` into `folder` (created); returns the folder."""
    methods = attached(model)
    if not methods:
        raise PicoGPTError("this model has no adapters (LoRA, prefix or bottleneck) to save.")
    if len(methods) > 1:
        raise PicoGPTError(f"this model carries {' and '.join(methods)}: a folder holds one method, as in peft; "
                           "remove all but one first.")
    c = model.config
    if methods == ["lora"]:
        tensors, config = _lora_tensors(model), _lora_config(model)
    elif methods == ["prefix"]:
        table, _ = PX.table_forward(model.params)
        tensors = {"prompt_embeddings": asnumpy(table)}
        config = {"peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": int(table.shape[0]),
                  "token_dim": c.n_embd, "num_transformer_submodules": 1, "num_attention_heads": c.n_head,
                  "num_layers": c.n_layer, "encoder_hidden_size": c.n_embd, "prefix_projection": False,
                  "inference_mode": True}
    else:
        names = AD.adapter_names(model.params)
        tensors = {k: asnumpy(model.params[k]) for k in names}
        size = int(model.params[names[0]].shape[1]) if names[0].endswith("down.weight") else None
        size = size or int(model.params[[k for k in names if k.endswith("down.bias")][0]].shape[0])
        config = {"peft_type": BOTTLENECK, "format": "picogpt (peft has no bottleneck adapters)", "adapter_size": size,
                  "kind": AD.adapter_kind(model.params), "non_linearity": "gelu_new", "n_layer": c.n_layer,
                  "n_embd": c.n_embd}
    config["base_model_name_or_path"] = base_model_name_or_path
    folder = make_folder(Path(folder), "adapter folder")
    safetensors.save({k: np.ascontiguousarray(a) for k, a in tensors.items()}, folder / WEIGHTS,
                     metadata={"format": "pt"})
    write_json(folder / CONFIG, config)
    return folder


def _lora_tensors(model):
    out = {}
    for k in LO.lora_names(model.params):
        name, ab = k.rsplit(".lora_", 1)
        out[f"{PEFT_PREFIX}{name}.lora_{ab}.weight"] = asnumpy(model.params[k]).T   # (in, r) -> (r, in)
    return out


def _lora_config(model):
    names = LO.lora_names(model.params)
    rank = int(model.params[names[0]].shape[1] if names[0].endswith("_A") else model.params[names[0]].shape[0])
    alpha = (model.lora or {}).get("alpha", model.lora_scale * rank)
    targets = sorted({k.split(".", 2)[2].rsplit(".lora_", 1)[0] for k in names})
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": float(alpha),
            "target_modules": targets,   # "attn.c_proj" matches peft's module names by suffix
            "fan_in_fan_out": True, "lora_dropout": 0.0, "bias": "none", "use_rslora": False, "use_dora": False,
            "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None, "rank_pattern": {},
            "alpha_pattern": {}, "inference_mode": True}


# --- reading ---------------------------------------------------------------------------------

RUN_FOLDER = "adapter"   # where picogpt.train writes a run's adapters, beside model.safetensors


def attach_run_adapters(model, folder):
    """Attach `folder`/adapter/ when it holds a prefix or bottleneck adapters: a training run
    with those saves the base weights (they cannot be merged in) and the adapters beside them,
    so that load_model(run folder) is the trained model. A LoRA run's adapter/ is not attached:
    its model.safetensors already holds the merged weights."""
    run = Path(folder) / RUN_FOLDER
    if (run / CONFIG).is_file() and _read_config(run).get("peft_type") != "LORA":
        load_adapters(model, run)
    return model


def _read_config(folder):
    try:
        return json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise PicoGPTError(f"{folder / CONFIG} is not valid JSON ({e}).") from None



def load_adapters(model, folder):
    """Attach the adapters in `folder` (peft's LoRA or prefix, or picogpt's bottleneck) to
    `model`, in place; returns the model."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise PicoGPTError(f"{folder} is not an adapter folder: it needs {CONFIG} and {WEIGHTS} "
                           "(as peft's save_pretrained or picogpt.save_adapters write them).")
    config = _read_config(folder)
    tensors = {k: np.array(a) for k, a in safetensors.load(folder / WEIGHTS).items()}   # copies: read-only mmap
    kind = config.get("peft_type")
    if kind == "LORA":
        _load_lora(model, config, tensors, folder)
    elif kind == "PREFIX_TUNING":
        _load_prefix(model, config, tensors, folder)
    elif kind == BOTTLENECK:
        _load_bottleneck(model, config, tensors, folder)
    else:
        raise PicoGPTError(f"{folder}: picogpt reads LORA and PREFIX_TUNING adapters (and its own {BOTTLENECK}), "
                           f"not {kind!r}.")
    return model


def _put(model, tensors, folder):
    """Check every tensor's shape against the model's and attach them (in the model's dtype)."""
    for k, a in tensors.items():
        if not np.isfinite(a).all():
            raise PicoGPTError(f"{folder}: {k!r} contains NaN or infinite values.")
    # C order: a transposed view would give the matmuls another memory layout (and other roundings)
    model.params.update({k: model.xp.asarray(np.ascontiguousarray(a, dtype=model.dtype)) for k, a in tensors.items()})


def _refuse_other_shape(folder, made_for, c):
    raise PicoGPTError(f"{folder} holds adapters for a model of another shape ({made_for}); this model has "
                       f"n_layer={c.n_layer}, n_embd={c.n_embd}, n_head={c.n_head}.")


def _load_lora(model, config, tensors, folder):
    for key, bad in (("use_dora", True), ("bias", "lora_only"), ("bias", "all")):
        if config.get(key) == bad:
            raise PicoGPTError(f"{folder}: picogpt's LoRA has no {key}={bad!r}; train without it.")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise PicoGPTError(f"{folder}: picogpt's LoRA uses one rank and alpha for every projection "
                           "(this folder has rank_pattern or alpha_pattern).")
    if config.get("modules_to_save"):
        raise PicoGPTError(f"{folder}: modules_to_save ({config['modules_to_save']}) are not adapters picogpt reads.")
    if LO.lora_names(model.params):
        raise PicoGPTError("this model already has LoRA adapters: merge or remove them first.")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    if r < 1:
        raise PicoGPTError(f"{folder}: the LoRA rank must be >= 1, got {r}.")
    ours, c = {}, model.config
    for k, a in tensors.items():
        m = _LORA_KEY.fullmatch(k.removeprefix("base_model.model.").removeprefix("transformer."))
        if m is None:
            raise PicoGPTError(f"{folder}: {k!r} is not a LoRA tensor of GPT-2's c_attn, c_proj or c_fc.")
        i, name, ab = int(m[1]), m[2], m[3]
        W = model.params.get(f"h.{i}.{name}.weight")
        want = None if W is None else ((W.shape[0], r) if ab == "A" else (r, W.shape[1]))
        if want is None or a.T.shape != want:
            _refuse_other_shape(folder, f"{k} is {tuple(a.shape)}", c)
        ours[f"h.{i}.{name}.lora_{ab}"] = a.T
    _put(model, ours, folder)
    model.lora_scale = alpha / (r ** 0.5 if config.get("use_rslora") else r)
    model.lora = {"rank": r, "alpha": alpha, "targets": sorted({k.split(".", 2)[2].rsplit(".lora_", 1)[0] for k in ours})}


def _load_prefix(model, config, tensors, folder):
    c = model.config
    shape = (config.get("num_layers"), config.get("token_dim"), config.get("num_attention_heads"))
    if shape != (c.n_layer, c.n_embd, c.n_head):
        _refuse_other_shape(folder, "num_layers={}, token_dim={}, num_attention_heads={}".format(*shape), c)
    if config.get("num_transformer_submodules", 1) != 1:
        raise PicoGPTError(f"{folder}: a prefix for an encoder-decoder model (num_transformer_submodules=2); "
                           "GPT-2 is decoder-only.")
    table = tensors.get("prompt_embeddings")
    P = int(config["num_virtual_tokens"])
    if table is None or set(tensors) != {"prompt_embeddings"} or table.shape != (P, 2 * c.n_layer * c.n_embd):
        raise PicoGPTError(f"{folder}: a prefix folder holds one tensor prompt_embeddings ({P}, "
                           f"{2 * c.n_layer * c.n_embd}); this one holds {sorted(tensors)}.")
    if P >= c.n_ctx:
        raise PicoGPTError(f"{folder}: {P} virtual tokens leave no room in the model's context of {c.n_ctx}.")
    if PX.prefix_names(model.params):
        raise PicoGPTError("this model already has a prefix: remove it first.")
    _put(model, {PX.TABLE: table}, folder)


def _load_bottleneck(model, config, tensors, folder):
    c = model.config
    if (config.get("n_layer"), config.get("n_embd")) != (c.n_layer, c.n_embd):
        _refuse_other_shape(folder, f"n_layer={config.get('n_layer')}, n_embd={config.get('n_embd')}", c)
    kind, M = config.get("kind"), int(config.get("adapter_size", 0))
    if kind not in AD.KINDS or M < 1:
        raise PicoGPTError(f"{folder}: kind must be houlsby or pfeiffer and adapter_size >= 1, got {kind!r}, {M}.")
    shapes = {"down.weight": (c.n_embd, M), "down.bias": (M,), "up.weight": (M, c.n_embd), "up.bias": (c.n_embd,)}
    want = {f"h.{i}.{w}.{part}": s for i in range(c.n_layer) for w in AD.KINDS[kind] for part, s in shapes.items()}
    if set(tensors) != set(want) or any(tensors[k].shape != s for k, s in want.items()):
        raise PicoGPTError(f"{folder}: the tensors are not {kind} adapters of size {M} for this model.")
    if AD.adapter_names(model.params):
        raise PicoGPTError("this model already has bottleneck adapters.")
    _put(model, tensors, folder)
