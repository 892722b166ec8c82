"""Checkpoint size: this package's adapter-sized Lightning checkpoint vs the full state dict.

    python -m benchmarks.checkpoint_size

For the default recipe (packaged all-MiniLM-L6-v2) and for the bert-base recipe (a randomly
initialised bert-base-uncased-shaped model, no download: the sizes depend on shapes only), it fits
one optimizer step, saves the checkpoint the way ``ModelCheckpoint`` does, and compares it with
``torch.save(model.state_dict())``. Prints a table; writes benchmarks/results/checkpoint_size.json.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, BertConfig, BertModel

from lora_lightning.hub import resolve_model_path
from lora_lightning.model import LoRAClassifier

PACKAGED = "sentence-transformers/all-MiniLM-L6-v2"


def bert_base_folder(root: Path) -> str:
    """A random bert-base-uncased-shaped BertModel with the (same, uncased 30,522-word) MiniLM tokenizer."""
    torch.manual_seed(0)
    BertModel(BertConfig()).save_pretrained(root)
    AutoTokenizer.from_pretrained(resolve_model_path(PACKAGED)).save_pretrained(root)
    return str(root)


def measure(name: str, model_name_or_path: str, tmp: Path) -> dict:
    pl.seed_everything(0)
    model = LoRAClassifier(model_name_or_path)
    batch = {"input_ids": torch.randint(1000, 2000, (8, 16)), "attention_mask": torch.ones(8, 16, dtype=torch.long),
             "labels": torch.randint(0, 2, (8,))}
    loader = DataLoader([batch], batch_size=None)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, train_dataloaders=loader)
    ckpt = tmp / f"{name}.ckpt"
    trainer.save_checkpoint(ckpt)
    full = tmp / f"{name}-full.pt"
    torch.save(model.state_dict(), full)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    trainable, total = (sum(p.numel() for p in model.parameters() if p.requires_grad),
                        sum(p.numel() for p in model.parameters()))
    return {
        "recipe": name,
        "model": model_name_or_path if not os.path.isdir(model_name_or_path) else "bert-base-uncased shape (random)",
        "trainable_params": trainable,
        "total_params": total,
        "checkpoint_tensors": len(state["state_dict"]),
        "checkpoint_bytes": ckpt.stat().st_size,
        "full_state_dict_tensors": len(model.state_dict()),
        "full_state_dict_bytes": full.stat().st_size,
    }


def main() -> None:
    """Checkpoint size of the default recipe and of a bert-base-shaped model; writes
    benchmarks/results/checkpoint_size.json."""
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows.append(measure("default (MiniLM-L6, r=4, query+value)", PACKAGED, tmp))
        (tmp / "bert-base").mkdir()
        rows.append(measure("bert-base (r=4, query+value)", bert_base_folder(tmp / "bert-base"), tmp))
    print(f"{'recipe':40} {'trainable':>10} {'ckpt tensors':>12} {'ckpt MB':>8} {'full MB':>8} {'ratio':>6}")
    for r in rows:
        print(f"{r['recipe']:40} {r['trainable_params']:>10,} {r['checkpoint_tensors']:>12} "
              f"{r['checkpoint_bytes'] / 1e6:>8.3f} {r['full_state_dict_bytes'] / 1e6:>8.1f} "
              f"{r['full_state_dict_bytes'] / r['checkpoint_bytes']:>6.0f}x")
    out = Path(__file__).parent / "results" / "checkpoint_size.json"
    meta = {"command": "python -m benchmarks.checkpoint_size", "torch": torch.__version__,
            "pytorch_lightning": pl.__version__, "python": platform.python_version()}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)  # --help describes it instead of running it
