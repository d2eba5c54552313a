"""Which numbers train: the parameter-efficient methods side by side, and BitFit.

    full fine-tuning   every parameter
    LoRA               h.{i}.{projection}.lora_A / lora_B               (peft/lora.py)
    prefix-tuning      prefix.kv, or prefix.mlp.* during training        (peft/prefix.py)
    adapters           h.{i}.adapter_attn.*, h.{i}.adapter_mlp.*         (peft/adapters.py)
    BitFit             every existing bias (Ben Zaken et al., 2022): the `.bias` of each
                       projection and layer norm; nothing is added, nothing else moves

The base weights of the other methods stay frozen: the optimiser is handed only these names,
and the backward skips the frozen matrices' dW = x^T dy (model.backward's `wanted`).
"""

import copy

from ..errors import PicoGPTError
from . import adapters as AD
from . import prefix as PX


def bias_names(params):
    """BitFit's trainable parameters: every bias in `params`."""
    names = [k for k in params if k.endswith(".bias")]
    if not names:
        raise PicoGPTError("this model has no biases (it was built with --bias false): BitFit has nothing to train.")
    return names


def attach(model, prefix_tokens=0, prefix_hidden=0, adapter_size=0, adapter_kind="houlsby", bitfit=False, seed=0,
           init_ids=None):
    """Attach the one method asked for (in place) and return the names that train; None when
    none is asked for (full fine-tuning). LoRA is picogpt.peft.lora.add_lora. init_ids: the
    tokens whose keys and values a prefix starts from (the first tokens of the training data)."""
    chosen = [name for name, on in (("prefix tokens", prefix_tokens), ("an adapter size", adapter_size),
                                    ("BitFit", bitfit)) if on]
    if len(chosen) > 1:
        raise PicoGPTError(f"choose one parameter-efficient method, not {' and '.join(chosen)}.")
    if prefix_tokens:
        return PX.add_prefix(model, prefix_tokens, prefix_hidden, seed=seed, init_ids=init_ids)
    if prefix_hidden:
        raise PicoGPTError("a prefix MLP width needs prefix tokens (--prefix-tokens N).")
    if adapter_size:
        return AD.add_adapters(model, adapter_size, adapter_kind, seed=seed)
    return bias_names(model.params) if bitfit else None


def base_model(model):
    """A shallow copy of `model` with only its base parameters (for save_model): prefixes and
    bottleneck adapters cannot be merged into the weights, so they are saved beside them."""
    base = copy.copy(model)
    drop = set(PX.prefix_names(model.params)) | set(AD.adapter_names(model.params))
    base.params = {k: a for k, a in model.params.items() if k not in drop}
    return base
