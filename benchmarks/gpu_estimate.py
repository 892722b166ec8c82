"""One epoch of bert-base with this recipe on 1 and 8 GPUs: an estimate on paper, from measured inputs.

    GLUE_DIR=../shared/data/glue python -m benchmarks.gpu_estimate

Measured here, on the CPU:
- the SST-2 train split's real and padded tokens per sentence, in the data module's batches of 32;
- the ops one training step issues on a bert-base-shaped model (random init: counts depend on shapes
  only), LoRA r=4 on query+value, forward + backward + AdamW, counted by the torch profiler (leaf aten
  ops that would launch a GPU kernel; views and allocations left out).
Computed: FLOPs per real token, the count ``train_throughput``'s limit uses.
Assumed (printed as such; ``benchmarks/gpu_bench.py`` measures what they stand for when a GPU
is lent): the GPU's dense bf16 rate and the MFU its GEMMs reach, the host's time per issued op in
eager PyTorch, and DDP's all-reduce time per step.

Per step: time = max(compute, issue) + all-reduce, compute = FLOPs / (peak x MFU), issue = ops x time
per op (a 450-token bert-base step is too small to hide the host behind the GPU). One epoch = its
steps x step time; with DDP on N GPUs each runs 1/N of the steps (batch 32 per GPU, 32 N per step).
Writes benchmarks/results/gpu_estimate.json.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.checkpoint_size import bert_base_folder
from benchmarks.cost_growth import step_flops
from benchmarks.profile_step import issued_ops
from lora_lightning.data import SST2DataModule
from lora_lightning.model import LoRAClassifier

RESULTS = Path(__file__).parent / "results" / "gpu_estimate.json"
ASSUMED = {"bf16_peak_tflops": 989.0,   # H100/H200 SXM dense bf16, NVIDIA's data sheet
           "gemm_mfu": 0.4,             # of that peak, on the step's GEMMs
           "us_per_op": 10.0,           # eager PyTorch: Python + dispatcher + launch, per issued op
           "allreduce_us": 60.0}        # DDP: one ~0.6 MB bucket over NVLink, per step


def ops_per_step(folder: str, tokens: int, batch: int = 32) -> int:
    """Leaf aten ops of one LoRA training step (forward, cross-entropy, backward, AdamW) on ``(batch, tokens)``."""
    torch.manual_seed(0)
    module = LoRAClassifier(folder).train()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    data = {"input_ids": torch.randint(1000, 2000, (batch, tokens)), "attention_mask": torch.ones(batch, tokens, dtype=torch.long),
            "token_type_ids": torch.zeros(batch, tokens, dtype=torch.long), "labels": torch.randint(0, 2, (batch,))}

    def step():
        module._shared_step(data)[0].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # AdamW's state is created on the first step
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return issued_ops(prof)


def main(n_samples: int = 60614) -> dict:
    """Args:
        n_samples: training sentences per epoch (SST-2's seeded 90/10 train split: 60,614).
    """
    dm = SST2DataModule("sentence-transformers/all-MiniLM-L6-v2")  # bert-base-uncased's own 30,522-word vocabulary
    dm.setup("fit")
    real = padded = 0
    for batch in dm.train_dataloader():
        real, padded = real + int(batch["attention_mask"].sum()), padded + batch["attention_mask"].numel()
    n = len(dm.datasets["train"])
    real_per_sample, padded_per_sample = real / n, padded / n
    with tempfile.TemporaryDirectory() as d:
        folder = bert_base_folder(Path(d))
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(folder)
        ops = ops_per_step(folder, round(padded_per_sample))
    adapters = [(c.hidden_size, c.hidden_size)] * 2 * c.num_hidden_layers  # query and value of every layer
    # the limit's count (cost_growth.step_flops), attention over the padded length, per token
    per_token = step_flops(c, 1, padded_per_sample, 4, adapters) / padded_per_sample
    a = ASSUMED
    rows = []
    for gpus in (1, 8):
        steps = -(-n_samples // (32 * gpus))
        compute_ms = per_token * real_per_sample * 32 / (a["bf16_peak_tflops"] * 1e12 * a["gemm_mfu"]) * 1e3
        issue_ms = ops * a["us_per_op"] / 1e3
        step_ms = max(compute_ms, issue_ms) + (a["allreduce_us"] / 1e3 if gpus > 1 else 0.0)
        epoch_s = steps * step_ms / 1e3
        rows.append({"gpus": gpus, "steps": steps, "compute_ms_per_step": compute_ms, "issue_ms_per_step": issue_ms,
                     "step_ms": step_ms, "epoch_s": epoch_s,
                     "mfu": per_token * real_per_sample * n_samples / epoch_s / (a["bf16_peak_tflops"] * 1e12 * gpus)})
    result = {"measured": {"real_tokens_per_sample": real_per_sample, "padded_tokens_per_sample": padded_per_sample,
                           "ops_per_step": ops, "flops_per_real_token": per_token,
                           "epoch_flops": per_token * real_per_sample * n_samples},
              "assumed": a, "estimate": rows, "command": "GLUE_DIR=../shared/data/glue python -m benchmarks.gpu_estimate",
              "torch": torch.__version__}
    print(f"measured: {real_per_sample:.2f} real / {padded_per_sample:.2f} padded tokens per sentence; "
          f"{ops} ops per step; {per_token / 1e6:.1f} MFLOP per real token; "
          f"{result['measured']['epoch_flops'] / 1e12:.0f} TFLOP per epoch")
    print(f"assumed: {a}")
    print(f"{'GPUs':>4} {'steps':>6} {'compute ms':>11} {'issue ms':>9} {'step ms':>8} {'epoch s':>8} {'MFU':>6}")
    for row in rows:
        print(f"{row['gpus']:>4} {row['steps']:>6} {row['compute_ms_per_step']:>11.2f} {row['issue_ms_per_step']:>9.1f} "
              f"{row['step_ms']:>8.1f} {row['epoch_s']:>8.1f} {100 * row['mfu']:>5.1f}%")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
