"""The optimizer and learning-rate schedule a ``LoRAClassifier`` trains with, and how a resumed run keeps them.

torch only: AdamW over the trainable parameters (LoRA+'s second group for ``lora_B``: Hayou et al. 2024,
arXiv:2402.12354), a linear warm-up then linear decay to 0 per optimizer step (transformers'
``get_linear_schedule_with_warmup`` formula).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def linear_factor(step: int, warmup: int, total: int) -> float:
    """The multiple of the peak rate at optimizer step ``step``: ``step / warmup`` while warming up, then linear
    decay to 0 at ``total`` (steps)."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


def adamw(named: list[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float,
          loraplus_lr_ratio: float | None = None) -> torch.optim.AdamW:
    """AdamW over ``named`` (the trainable parameters); one fused kernel on CUDA (float32 tensors, as the trained
    ones always are). With ``loraplus_lr_ratio``, the ``lora_B`` tensors are a second group at ``ratio x lr``.

    Args:
        named: ``(name, parameter)`` of what trains.
        lr: peak learning rate.
        weight_decay: decoupled weight decay.
        loraplus_lr_ratio: LoRA+'s multiple of ``lr`` for ``lora_B`` (``None``: one group).
    """
    fused = {"fused": True} if named and all(p.is_cuda and p.dtype == torch.float32 for _, p in named) else {}
    if loraplus_lr_ratio is None:
        groups = [{"params": [p for _, p in named]}]
    else:  # B learns ratio x faster than A; the head keeps the base rate
        groups = [{"params": [p for n, p in named if not n.endswith("lora_B")]},
                  {"params": [p for n, p in named if n.endswith("lora_B")], "lr": lr * loraplus_lr_ratio}]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, **fused)


def resumed_schedule(saved: tuple[int, int], total: int, step: int) -> str | None:
    """The line a resumed run says when its stopping point is not its schedule's end (``None`` when it is):
    the run goes on with ``saved`` (warm-up, length), whatever ``total`` (steps) it now stops at."""
    warmup, length = saved
    if length == total:
        return None
    after = (f"steps {length}..{total} train at rate 0 (a longer schedule needs a new run: fit without --ckpt_path)"
             if total > length else f"it ends before the rate decays to 0 at step {length}")
    return (f"resuming at step {step}: the learning-rate schedule goes on as its run had it ({length} steps, {warmup} "
            f"of warm-up); trainer.max_epochs / max_steps now stop the run at step {total}: {after}")


def set_rates(schedulers: Iterable, factor) -> None:
    """Set each scheduler's current learning rates from ``factor(step)`` now that the schedule is known (Lightning
    built the schedulers before the run's length was)."""
    for scheduler in schedulers:
        for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base_lr * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
