"""Where a training step's time goes: torch profiler over this package's model on length-grouped batches.

    GLUE_DIR=../shared/data/glue python -m benchmarks.profile_step [--steps 40]

Runs ``steps`` training steps of the default recipe (packaged MiniLM-L6, LoRA r=4 on query+value,
batch 32, AdamW) on the data module's own length-grouped batches, under ``torch.profiler``, and
prints the share of CPU time by kind of op (matrix multiplies, elementwise/normalisation, optimizer,
the rest) and the top ops. Writes benchmarks/results/profile_step.json.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from lora_lightning.data import SST2DataModule
from lora_lightning.model import LoRAClassifier

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
RESULTS = Path(__file__).parent / "results" / "profile_step.json"
GEMM = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::_scaled_dot_product")


def kind(name: str) -> str:
    if name.startswith(GEMM) or "scaled_dot_product" in name:
        return "matrix multiplies (incl. attention)"
    if "adam" in name.lower() or name.startswith(("aten::_foreach", "Optimizer.")):
        return "optimizer"
    if any(k in name for k in ("layer_norm", "gelu", "softmax", "dropout", "add", "mul", "tanh", "native_", "copy_")):
        return "elementwise / normalisation / dropout"
    return "other ops"


def main(steps: int = 40) -> dict:
    """Args:
        steps: training steps to profile (after 5 warm-up steps).
    """
    torch.manual_seed(0)
    dm = SST2DataModule(MODEL, max_train_samples=32 * (steps + 5))
    dm.setup("fit")
    module = LoRAClassifier(MODEL).train()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    batches = list(dm.train_dataloader())

    def step(batch):
        loss, _, _ = module._shared_step(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches[:5]:
        step(batch)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches[5:5 + steps]:
            step(batch)
    wall = time.perf_counter() - start
    shares: dict[str, float] = defaultdict(float)
    top = []
    for event in prof.key_averages():
        shares[kind(event.key)] += event.self_cpu_time_total
        top.append((event.self_cpu_time_total, event.key, event.count))
    total = sum(shares.values())
    result = {
        "steps": steps, "wall_s": wall, "profiled_op_s": total / 1e6,
        "shares": {k: v / total for k, v in sorted(shares.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"op": k, "self_cpu_s": t / 1e6, "calls": c} for t, k, c in sorted(top, reverse=True)[:12]],
        "command": f"GLUE_DIR=../shared/data/glue python -m benchmarks.profile_step --steps {steps}",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    print(f"{steps} steps, {wall:.2f} s wall ({wall / steps * 1000:.0f} ms/step)")
    for k, v in result["shares"].items():
        print(f"  {k:42} {100 * v:5.1f}%")
    print("top ops by self CPU time:")
    for row in result["top_ops"]:
        print(f"  {row['op']:42} {row['self_cpu_s']:7.3f} s  {row['calls']:6d} calls")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
