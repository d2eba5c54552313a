"""picogpt: GPT-2 from scratch in plain array code, on NumPy (CPU) and CuPy (GPU).

    import picogpt
    model = picogpt.load_model()                 # the bundled Shakespeare model
    tok = picogpt.get_tokenizer(model)           # the model's tokenizer (GPT-2's for this one)
    ids = model.generate([tok.encode("ROMEO:")], max_new_tokens=40, temperature=0.8, seed=0)
    print(tok.decode(ids[0]))
"""

from .backend import asnumpy, get_array_module, gpu_available
from .config import PRESETS, GPT2Config, get_config
from .errors import PicoGPTError
from .heads import GPT2Classifier, make_classifier
from .model import GPT2, KVCache
from .peft.formats import load_adapters, save_adapters
from .tokenizers import get_tokenizer   # get_tokenizer(model): the model's own (char, BPE) or GPT-2's
from .weights import init_model, load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "GPT2", "GPT2Classifier", "GPT2Config", "KVCache", "PRESETS", "PicoGPTError", "asnumpy", "get_array_module",
    "get_config", "get_tokenizer", "gpu_available", "init_model", "load_adapters", "load_model", "make_classifier",
    "save_adapters", "save_model",
]
