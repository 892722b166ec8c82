"""GPU training throughput and model FLOPs utilisation on a bert-base-shaped model (bf16-mixed).

    GLUE_DIR=../shared/data/glue python -m benchmarks.gpu_throughput [--n_samples 32000] [--batch_size 32]

A randomly initialised bert-base-uncased-shaped model (speed depends on shapes only; no download),
LoRA r=4 on query+value, this package's Lightning loop (length-grouped batches), ``precision:
bf16-mixed``, on the first ``n_samples`` SST-2 training sentences. Reports samples/s, real tokens/s,
and model FLOPs utilisation: (FLOPs per real token x real tokens/s) / the card's measured bf16
matmul rate (a timed 8192^3 GEMM). Writes benchmarks/results/gpu_throughput.json.
``--accelerator cpu --n_samples 256`` runs it as a smoke test anywhere.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from benchmarks.checkpoint_size import bert_base_folder
from benchmarks.train_throughput import Timer
from lora_lightning.data import SST2DataModule
from lora_lightning.model import LoRAClassifier

RESULTS = Path(__file__).parent / "results" / "gpu_throughput.json"


def bf16_matmul_rate(device: str, n: int = 8192, repeats: int = 20) -> float:
    """Measured dense bf16 FLOP/s of an ``n x n x n`` matmul on ``device``."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def main(n_samples: int = 32000, batch_size: int = 32, accelerator: str = "cuda", epochs: int = 2,
         out: str = str(RESULTS)) -> dict:
    """Args:
        n_samples: training sentences per epoch.
        batch_size: sentences per step.
        accelerator: ``cuda`` (the point) or ``cpu`` (a smoke test).
        epochs: passes; the first is warm-up, the others are timed (median).
        out: where to write the JSON result.
    """
    device = "cuda" if accelerator == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as d:
        folder = bert_base_folder(Path(d))
        pl.seed_everything(0)
        model = LoRAClassifier(folder)
        dm = SST2DataModule(folder, batch_size=batch_size, max_train_samples=n_samples, max_eval_samples=32)
        timer = Timer()
        trainer = pl.Trainer(accelerator=accelerator, devices=1, precision="bf16-mixed", max_epochs=epochs,
                             limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
        trainer.fit(model, dm)
    seconds = sorted(timer.times[1:])[len(timer.times[1:]) // 2]
    c = model.model.config
    d_model, ffn, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    per_token = 2 * 2 * layers * (4 * d_model * d_model + 2 * d_model * ffn)  # forward + activation grads
    real_per_s = timer.real / seconds
    rate = bf16_matmul_rate(device, n=8192 if device == "cuda" else 1024)
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "samples_per_s": n_samples / seconds, "real_tokens_per_s": real_per_s,
        "padded_tokens_per_s": timer.padded / seconds, "bf16_matmul_tflops": rate / 1e12,
        "model_flops_utilisation": per_token * real_per_s / rate,
        "command": f"python -m benchmarks.gpu_throughput --n_samples {n_samples} --batch_size {batch_size} "
                   f"--accelerator {accelerator}",
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
