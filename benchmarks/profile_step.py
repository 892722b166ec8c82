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


# aten ops that launch no kernel (views, allocation, metadata): left out of ``issued_ops``
NO_KERNEL = ("view", "t", "transpose", "expand", "as_strided", "reshape", "_reshape_alias", "permute", "unsqueeze",
             "squeeze", "slice", "select", "detach", "alias", "empty", "empty_like", "empty_strided", "resolve_conj",
             "resolve_neg", "lift_fresh", "unbind", "split", "chunk", "result_type", "to", "_to_copy", "contiguous",
             "set_", "lift", "_unsafe_view", "numpy_T", "item", "_local_scalar_dense", "is_nonzero")


def issued_ops(prof) -> int:
    """Leaf aten ops in a profile (no aten op below them) that would each run a kernel: the ops the
    host issues one by one in eager PyTorch."""
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and not e.cpu_children
               and e.name.removeprefix("aten::") not in NO_KERNEL)


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
    # The forward Linears (bias: addmm) against the GEMM rate train_throughput's limit measures
    c = module.model.config
    padded = sum(b["attention_mask"].numel() for b in batches[5:5 + steps])
    sentences = sum(len(b["attention_mask"]) for b in batches[5:5 + steps])
    d, f = c.hidden_size, c.intermediate_size
    linear_flops = 2 * padded * c.num_hidden_layers * (4 * d * d + 2 * d * f)
    # the last layer's attention output and FFN run for [CLS] only (backbone.last_layer_first_token_only)
    linear_flops -= 2 * (padded - sentences) * (d * d + 2 * d * f)
    addmm_s = sum(t for t, k, _ in top if k == "aten::addmm") / 1e6
    result = {
        "steps": steps, "wall_s": wall, "profiled_op_s": total / 1e6, "padded_tokens_per_step": padded / steps,
        "forward_linear_gflops": linear_flops / addmm_s / 1e9, "ops_per_step": issued_ops(prof) / steps,
        "shares": {k: v / total for k, v in sorted(shares.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"op": k, "self_cpu_s": t / 1e6, "calls": c} for t, k, c in sorted(top, reverse=True)[:12]],
        "command": f"GLUE_DIR=../shared/data/glue python -m benchmarks.profile_step --steps {steps}",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    print(f"{steps} steps, {wall:.2f} s wall ({wall / steps * 1000:.0f} ms/step), {padded / steps:.0f} padded tokens/step, "
          f"{result['ops_per_step']:.0f} ops/step; forward Linears (addmm) at {result['forward_linear_gflops']:.0f} GFLOP/s")
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
