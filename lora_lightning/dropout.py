"""Dropout whose mask is half as dear on CPU: one float32 uniform draw per element.

``nn.Dropout`` draws its mask with ``bernoulli_``; on this project's CPUs (AMD EPYC, torch 2.13)
that takes about twice as long as ``torch.rand`` of the same size, and dropout's masks were about a sixth
of a training step's op time (``python -m benchmarks.profile_step``). ``Dropout`` keeps the element
that ``u >= p`` for ``u ~ U[0, 1)`` drawn by ``torch.rand`` from torch's default generator, and
scales it by ``1 / (1 - p)``: the same distribution as ``nn.Dropout`` (a kept element with
probability ``1 - p``, expectation unchanged; ``u`` lies on a 2^-24 grid, so the drop probability is
``p`` to within 1e-7), driven by the same seed (``seed_everything``, ``manual_seed``), but not the
same masks. Measured: ``python -m benchmarks.levers``.

On any other device (CUDA draws and applies the mask in one fused kernel), in ``eval()``, and for
``p`` of 0 or 1 it is ``nn.Dropout`` itself. The attention-probability dropout that
``scaled_dot_product_attention`` applies inside its kernel is not a module and is left as it is.

This module imports torch only.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Dropout", "use_fast_dropout"]


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a ``torch.rand`` mask on CPU (see the module docstring); same ``p``, ``inplace``.

    ``x: (*)`` -> ``(*)``, same shape and dtype. The uniform draw is float32 whatever ``x``'s dtype
    (a bfloat16 draw would put ``p`` on a 2^-8 grid). Raises ``ValueError`` for ``p`` outside [0, 1]
    (``nn.Dropout``'s check).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu" or self.p in (0.0, 1.0):
            return super().forward(x)
        mask = torch.rand(x.shape, dtype=torch.float32, device=x.device).ge_(self.p).mul_(1.0 / (1.0 - self.p))
        mask = mask.to(x.dtype)
        return x.mul_(mask) if self.inplace else x * mask


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every plain ``nn.Dropout`` module of ``model`` (in place) by ``Dropout`` with its ``p`` and
    ``inplace`` and training mode. Subclasses of ``nn.Dropout`` are left alone. Returns how many were replaced."""
    plain = [name for name, m in model.named_modules() if name and type(m) is nn.Dropout]
    for name in plain:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child)
        setattr(parent, child, Dropout(old.p, old.inplace).train(old.training))
    return len(plain)
