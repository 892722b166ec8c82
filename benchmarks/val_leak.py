"""How much of SST-2's val split the train split already holds, for each split, and val accuracy on its parts.

    GLUE_DIR=../shared/data/glue python -m benchmarks.val_leak [--ckpts 'a.ckpt,b.ckpt']

GLUE's SST-2 train set is phrases cut from the parse trees of ~8,500 movie-review sentences, so the seed's
random 90/10 split puts most val phrases inside a train phrase of the same sentence; the package's
default, the split by source sentence (``data.val_split=by_sentence``), puts none there. For both splits
this script counts the val phrases that occur inside some train phrase as a run of whole words
(``data.splits.phrase_overlap``, independent of how the split was made), and the same for GLUE dev
against the train split. For each checkpoint given, it reports the accuracy on the random split's val,
on its "seen" part and on its "unseen" part, and on the by-sentence val. Writes
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


def split_overlap(data_dir: Path, seed: int = 42, val_fraction: float = 0.1, val_split: str = "random") -> dict:
    """The package's seeded train/val split (``val_split``), and which val phrases occur inside a train phrase."""
    from lora_lightning.data import SST2DataModule, read_split
    from lora_lightning.data.splits import inside_phrases, phrase_overlap

    raw = read_split(data_dir / "train.tsv", True)
    dm = SST2DataModule(data_dir=str(data_dir), val_fraction=val_fraction, seed=seed, val_split=val_split)
    train_ds, val = dm.split_val(raw)
    train = list(train_ds["sentence"])
    dev = list(read_split(data_dir / "dev.tsv", True)["sentence"])
    seen = inside_phrases(train, val["sentence"])

    def words(texts) -> float:  # mean words per phrase (0 for none)
        counts = [len(t.split()) for t in texts]
        return statistics.mean(counts) if counts else 0.0

    return {"val": val, "seen": seen, "dev_inside_train": phrase_overlap(train, dev),
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
    """Count the overlap of both splits; score each checkpoint (comma-separated paths) on their val sets."""
    folder = Path(data_dir or os.path.join(os.environ.get("GLUE_DIR", "../shared/data/glue"), "SST-2"))
    splits = {name: split_overlap(folder, val_split=name) for name in ("random", "by_sentence")}
    result = {"command": "python -m benchmarks.val_leak" + (f" --ckpts '{ckpts}'" if ckpts else ""),
              "date": time.strftime("%Y-%m-%d"), "count": "val phrases occurring inside a train phrase as a run of whole words",
              "splits": {}, "checkpoints": []}
    for name, split in splits.items():
        seen = split["seen"]
        result["splits"][name] = {"val_rows": len(seen), "val_seen": sum(seen),
                                  "val_seen_fraction": round(sum(seen) / len(seen), 4),
                                  "dev_inside_train_fraction": round(split["dev_inside_train"], 4),
                                  "mean_words": {k: round(v, 2) for k, v in split["words"].items()}}
        print(f"{name}: val phrases inside a train phrase: {sum(seen):,} of {len(seen):,} ({sum(seen) / len(seen):.1%}); "
              f"GLUE dev sentences inside a train phrase: {split['dev_inside_train']:.1%}; mean words {result['splits'][name]['mean_words']}")
    for ckpt in filter(None, ckpts.split(",")):
        row = {"ckpt": ckpt}
        for name, split in splits.items():
            val, seen = split["val"], split["seen"]
            right = [p == y for p, y in zip(predictions(ckpt, list(val["sentence"])), val["label"])]

            def acc(keep):
                kept = [r for r, k in zip(right, keep) if k]
                return round(sum(kept) / len(kept), 4) if kept else None

            row[f"{name}_val_acc"] = acc([True] * len(right))
            if name == "random":
                row.update(random_val_seen_acc=acc(seen), random_val_unseen_acc=acc([not k for k in seen]),
                           random_unseen_n=len(seen) - sum(seen))
        result["checkpoints"].append(row)
        print(json.dumps(row))
    Path(json_path).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
