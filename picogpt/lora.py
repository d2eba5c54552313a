"""LoRA, kept importable as `picogpt.lora`: it lives in picogpt/peft/lora.py beside the other
parameter-efficient methods (prefix-tuning, bottleneck adapters)."""

from .peft.lora import (DEFAULT_TARGETS, add_lora, load_adapters, lora_names, merge_lora, remove_lora,  # noqa: F401
                        save_adapters)
