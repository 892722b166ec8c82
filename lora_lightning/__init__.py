"""LoRA (Hu et al. 2021, arXiv:2106.09685) fine-tuning of BERT on SST-2, the PyTorch Lightning way."""

from lora_lightning.lora import (LoRALinear, inject_lora, mark_only_lora_as_trainable, merge_and_unload, merge_lora,
                                 unmerge_lora)

__all__ = ["LoRALinear", "inject_lora", "mark_only_lora_as_trainable", "merge_lora", "unmerge_lora", "merge_and_unload"]
__version__ = "0.1.0"
