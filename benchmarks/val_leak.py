"""How much of SST-2's val split the train split already holds, and val accuracy without it.

    GLUE_DIR=../shared/data/glue python -m benchmarks.val_leak [--ckpts 'a.ckpt,b.ckpt']

GLUE's SST-2 train set is phrases cut from the parse trees of ~8,500 movie-review sentences, so a
random 90/10 split of it (the package's val split) puts most val phrases inside a train phrase of
the same sentence. This script counts them (a val phrase that appears verbatim, as a substring,
in some train phrase) and, for each checkpoint given, reports the accuracy on all of val, on the
"seen" part and on the "unseen" part (mostly whole sentences, like GLUE dev). Writes
benchmarks/results/val_leak.json.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "val_leak.json"


def split_overlap(data_dir: Path, seed: int = 42, val_fraction: float = 0.1) -> dict:
    """The package's seeded train/val split, and which val phrases occur inside a train phrase."""
    from lora_lightning.data import read_split

    raw = read_split(data_dir / "train.tsv", True).train_test_split(test_size=val_fraction, seed=seed)
    train = [s.strip() for s in raw["train"]["sentence"]]
    val = raw["test"]
    dev = [s.strip() for s in read_split(data_dir / "dev.tsv", True)["sentence"]]
    text = "\n".join(train)
    seen = [s.strip() in text for s in val["sentence"]]

    def words(texts) -> float:  # mean words per phrase (0 for none)
        counts = [len(t.split()) for t in texts]
        return statistics.mean(counts) if counts else 0.0

    return {"val": val, "seen": seen, "dev_inside_train": sum(s in text for s in dev) / len(dev),
            "words": {"train": words(train), "val_seen": words(s for s, k in zip(val["sentence"], seen) if k),
                      "val_unseen": words(s for s, k in zip(val["sentence"], seen) if not k), "dev": words(dev)}}


@torch.no_grad()
def predictions(ckpt: str, sentences: list[str], batch_size: int = 128) -> list[int]:
    """Predicted class of each sentence by the checkpoint's model (eval mode)."""
    from lora_lightning.hub import load_tokenizer
    from lora_lightning.model import LoRAClassifier

    model = LoRAClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    tokenizer = load_tokenizer(model.hparams.model_name_or_path)
    out = []
    for i in range(0, len(sentences), batch_size):
        batch = tokenizer(sentences[i:i + batch_size], truncation=True, max_length=128, padding=True, return_tensors="pt")
        out += model(**batch).argmax(-1).tolist()
    return out


def main(ckpts: str = "", data_dir: str | None = None, json_path: str = str(RESULTS)) -> dict:
    """Count the overlap; score each checkpoint (comma-separated paths) on val, seen and unseen."""
    folder = Path(data_dir or os.path.join(os.environ.get("GLUE_DIR", "../shared/data/glue"), "SST-2"))
    split = split_overlap(folder)
    val, seen = split["val"], split["seen"]
    result = {"command": "python -m benchmarks.val_leak" + (f" --ckpts '{ckpts}'" if ckpts else ""),
              "date": time.strftime("%Y-%m-%d"), "val_rows": len(seen), "val_seen": sum(seen),
              "val_seen_fraction": round(sum(seen) / len(seen), 4),
              "dev_inside_train_fraction": round(split["dev_inside_train"], 4),
              "mean_words": {k: round(v, 2) for k, v in split["words"].items()}, "checkpoints": []}
    print(f"val phrases inside a train phrase: {sum(seen):,} of {len(seen):,} ({result['val_seen_fraction']:.1%}); "
          f"GLUE dev sentences inside a train phrase: {result['dev_inside_train_fraction']:.1%}")
    print(f"mean words: {result['mean_words']}")
    labels = val["label"]
    for ckpt in filter(None, ckpts.split(",")):
        pred = predictions(ckpt, list(val["sentence"]))
        right = [p == y for p, y in zip(pred, labels)]

        def acc(keep):
            kept = [r for r, k in zip(right, keep) if k]
            return round(sum(kept) / len(kept), 4)

        row = {"ckpt": ckpt, "val_acc": acc([True] * len(right)), "val_seen_acc": acc(seen),
               "val_unseen_acc": acc([not k for k in seen]), "unseen_n": len(seen) - sum(seen)}
        result["checkpoints"].append(row)
        print(f"{ckpt}: val {row['val_acc']:.4f}, seen {row['val_seen_acc']:.4f}, unseen {row['val_unseen_acc']:.4f} "
              f"({row['unseen_n']} phrases)")
    Path(json_path).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
