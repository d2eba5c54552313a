"""Parameter-efficient fine-tuning: train a few numbers, keep the model frozen.

    lora.py      LoRA (Hu et al., 2021): low-rank updates beside the projections
    prefix.py    prefix-tuning (Li & Liang, 2021): trainable keys and values at every layer
    adapters.py  bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021)
    methods.py   which parameters train: attaching a method, and BitFit (biases only)
    formats.py   save_adapters / load_adapters: peft's folder layout (LoRA, prefix) and
                 picogpt's own for bottleneck adapters (peft has none)

This file holds only what the three methods share, and imports nothing but errors: model.py
imports prefix.py and adapters.py (their forward and backward are ops of the model), while
lora.py and formats.py import model.py.
"""

from ..errors import PicoGPTError


def remove_params(model, names, what):
    """Delete `names` (one method's parameters) from `model.params`, in place, and return them;
    when there are none, say so in one sentence: "this model has no {what} to remove." """
    if not names:
        raise PicoGPTError(f"this model has no {what} to remove.")
    for k in names:
        del model.params[k]
    return names
