"""Low-Rank Adaptation (LoRA) of linear layers, written out by hand.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685.

A frozen linear layer ``h = W0 x + b`` gets a trainable low-rank update::

    h = W0 x + b + (lora_alpha / r) * B A x

              x (.., in_features)
              |
      +-------+---------------+
      |                       |
   W0 (frozen)       dropout -> A (r, in_features)   Kaiming-uniform init
      |                       |
      |                       B (out_features, r)    zero init
      |                       |  * scaling = lora_alpha / r
      +---------(+)-----------+
                 |
              h (.., out_features)

Because ``B`` starts at zero the wrapped layer is exactly the original layer at
initialisation. ``merge()`` folds ``scaling * B @ A`` into ``W0`` for inference at the
base model's cost; ``unmerge()`` takes it out again.

Two variants, each a few lines beside the plain path:

- rsLoRA (Kalajdzievski 2023, arXiv:2312.03732): ``scaling = lora_alpha / sqrt(r)``, so the
  update's size does not shrink as ``r`` grows.
- DoRA (Liu et al. 2024, arXiv:2402.09353): the adapted weight is split into a trained magnitude
  ``m`` (one per output row) and a direction::

      h = m * (W0 + scaling B A) x / ||W0 + scaling B A||  + b      (row norms, as PEFT takes them)

  ``m`` starts at the row norms of ``W0`` (so the layer is still the original at init), and the norm
  is treated as a constant in the backward pass (the paper's section 4.3).

This module imports torch only: it knows nothing of transformers or Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lora_lightning.dropout import Dropout

__all__ = [
    "LoRALinear",
    "inject_lora",
    "mark_only_lora_as_trainable",
    "merge_lora",
    "unmerge_lora",
    "merge_and_unload",
    "count_parameters",
    "matches_target",
]


LORA_PARAMETERS = ("lora_A", "lora_B", "lora_magnitude")  # the parameter names LoRALinear adds


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``r`` update ``scaling * B @ A``.

    The wrapped layer is kept as ``base_layer`` (the same attribute name PEFT uses), so
    its weights keep their values and the wrapper can be merged back into a plain Linear.

    Args:
        base_layer: the linear layer to adapt; its parameters are frozen in place.
        r: rank of the update, ``>= 1``.
        lora_alpha: numerator of ``scaling = lora_alpha / r``, ``> 0``.
        lora_dropout: dropout probability on the LoRA branch's input, in ``[0, 1)``.
        use_rslora: ``scaling = lora_alpha / sqrt(r)`` (rsLoRA) instead of ``lora_alpha / r``.
        use_dora: weight-decomposed LoRA (DoRA): adds the trained magnitude ``lora_magnitude``.

    Attributes:
        lora_A: ``(r, in_features)``, Kaiming-uniform (``a=sqrt(5)``) at init.
        lora_B: ``(out_features, r)``, zeros at init.
        lora_magnitude: ``(out_features,)``, DoRA's magnitude, the row norms of ``W0`` at init
            (``None`` without ``use_dora``).
        scaling: ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``), a float.
        merged: whether ``scaling * B @ A`` is currently folded into ``base_layer.weight``.

    Raises:
        TypeError: ``base_layer`` is not an ``nn.Linear``.
        ValueError: ``r``, ``lora_alpha`` or ``lora_dropout`` out of range.
    """

    def __init__(
        self, base_layer: nn.Linear, r: int = 4, lora_alpha: float = 16.0, lora_dropout: float = 0.0,
        use_rslora: bool = False, use_dora: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base_layer).__name__}")
        check_lora_args(r, lora_alpha, lora_dropout)
        self.base_layer = base_layer
        self.base_layer.requires_grad_(False)
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.r = int(r)
        self.lora_alpha = float(lora_alpha)
        self.use_rslora, self.use_dora = bool(use_rslora), bool(use_dora)
        self.scaling = self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)
        weight = base_layer.weight
        # The trained tensors stay float32 under a half-precision base (AMP needs fp32 master weights).
        dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        self.lora_A = nn.Parameter(torch.empty(self.r, self.in_features, dtype=dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, self.r, dtype=dtype, device=weight.device))
        self.lora_magnitude = (nn.Parameter(torch.empty(self.out_features, dtype=dtype, device=weight.device))
                               if self.use_dora else None)
        self.lora_dropout = Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.merged = False
        self._unmerged_weight: torch.Tensor | None = None  # the exact base weight while merged
        self._merge_after_load = False
        self.reset_lora_parameters()
        self.train(base_layer.training)  # a new module defaults to training mode; follow the layer it wraps
        # A state dict always holds the unmerged W0 beside A and B, merged or not, so loading it anywhere applies
        # the update once; loading into a merged layer unmerges, loads, and merges the new values again.
        self.register_state_dict_post_hook(_save_unmerged)
        self.register_load_state_dict_pre_hook(_unmerge_before_load)
        self.register_load_state_dict_post_hook(_merge_after_load)

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped layer's weight ``(out_features, in_features)`` (merged or not, as ``merged`` says), for
        code that reads ``layer.weight`` (its dtype, device or shape), as PEFT's LoRA layers give it."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The wrapped layer's bias ``(out_features,)``, or ``None``."""
        return self.base_layer.bias

    def reset_lora_parameters(self) -> None:
        """A: Kaiming-uniform with ``a=sqrt(5)`` (as ``nn.Linear`` inits its weight); B: zeros;
        DoRA's magnitude: the row norms of ``W0`` (``B`` being zero)."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)
        if self.use_dora:
            with torch.no_grad():
                self.lora_magnitude.copy_(self.weight_norm())

    def weight_norm(self) -> torch.Tensor:
        """DoRA's ``||W0 + scaling B A||`` per output row, shape ``(out_features,)``, computed from the
        unmerged weight and detached: a constant in the backward pass (Liu et al. 2024, section 4.3)."""
        weight = self._unmerged_weight if self.merged else self.base_layer.weight
        with torch.no_grad():
            return torch.linalg.norm(weight.to(self.lora_A.dtype) + self.delta_weight(), dim=1)

    def delta_weight(self) -> torch.Tensor:
        """The update ``scaling * B @ A``, shape ``(out_features, in_features)``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (..., in_features) -> (..., out_features)``.

        Unmerged, the update runs through the rank-``r`` bottleneck (``x A^T`` then ``B^T``),
        never materialising the ``(out_features, in_features)`` product.
        """
        result = self.base_layer(x)
        if self.merged:
            return result
        dropped = self.lora_dropout(x).to(self.lora_A.dtype)
        h = F.linear(dropped, self.lora_A)  # (..., r)
        update = F.linear(h, self.lora_B) * self.scaling  # (..., out_features)
        if not self.use_dora:
            return result + update.to(result.dtype)
        # DoRA: m / ||W0 + dW|| rescales the whole output; written as a correction of the base output,
        # as PEFT writes it. With dropout active, the base term sees the dropped input too.
        scale = self.lora_magnitude / self.weight_norm()  # (out_features,)
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            base = result if self.base_layer.bias is None else result - self.base_layer.bias
        else:
            base = F.linear(dropped, self.base_layer.weight.to(dropped.dtype))
        return result + ((scale - 1) * base + scale * update).to(result.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ``scaling * B @ A`` into ``base_layer.weight``. Idempotent: a second call is a no-op.

        The sum is formed in float32 (or the weight's wider dtype) and rounded once to the
        weight's dtype; the exact original weight is kept so that ``unmerge`` restores it bit for
        bit (``W + d - d`` in floating point would drift over merge/unmerge cycles).
        """
        if self.merged:
            return
        weight = self.base_layer.weight
        wide = torch.promote_types(weight.dtype, torch.float32)
        merged = weight.to(wide) + self.delta_weight().to(wide)
        if self.use_dora:  # m / ||W0 + dW|| * (W0 + dW), row by row
            merged = (self.lora_magnitude.to(wide) / self.weight_norm().to(wide)).view(-1, 1) * merged
        self._unmerged_weight = weight.detach().clone()
        weight.copy_(merged.to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the exact ``base_layer.weight`` from before ``merge``. A no-op when not merged."""
        if not self.merged:
            return
        self.base_layer.weight.copy_(self._unmerged_weight)
        self._unmerged_weight = None
        self.merged = False

    def extra_repr(self) -> str:
        variants = "".join(f", {name}=True" for name in ("use_rslora", "use_dora") if getattr(self, name))
        return f"r={self.r}, lora_alpha={self.lora_alpha:g}, scaling={self.scaling:g}{variants}, merged={self.merged}"


def _save_unmerged(module: LoRALinear, state_dict: dict, prefix: str, local_metadata) -> None:
    """State-dict post-hook: a merged layer saves its exact unmerged ``base_layer.weight``."""
    if module.merged:
        state_dict[prefix + "base_layer.weight"] = module._unmerged_weight.detach().clone()


def _unmerge_before_load(module: LoRALinear, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    """Load pre-hook: a merged layer is unmerged first (the state dict holds unmerged weights), merged again after."""
    module._merge_after_load = module.merged
    module.unmerge()


def _merge_after_load(module: LoRALinear, incompatible_keys) -> None:
    if module._merge_after_load:
        module._merge_after_load = False
        module.merge()


def check_lora_args(r: int, lora_alpha: float, lora_dropout: float) -> None:
    """Raise one ``ValueError`` naming the first LoRA option out of range."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r must be an integer >= 1, got r={r!r}")
    if not lora_alpha > 0:
        raise ValueError(f"lora_alpha must be > 0, got lora_alpha={lora_alpha!r}")
    if not 0 <= lora_dropout < 1:
        raise ValueError(f"lora_dropout must be in [0, 1), got lora_dropout={lora_dropout!r}")


def matches_target(name: str, targets: Iterable[str]) -> bool:
    """PEFT's rule: the qualified ``name`` equals a target or ends with ``"." + target``
    (``check_target_module_exists``); used for ``target_modules`` and ``modules_to_save`` alike."""
    return any(name == t or name.endswith("." + t) for t in targets)


def inject_lora(
    model: nn.Module,
    target_modules: Sequence[str] = ("query", "value"),
    r: int = 4,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.1,
    use_rslora: bool = False,
    use_dora: bool = False,
) -> list[str]:
    """Wrap every ``nn.Linear`` of ``model`` whose qualified name matches a target in a ``LoRALinear``.

    A name matches a target when it equals it or ends with ``"." + target``; so ``query``
    matches ``bert.encoder.layer.0.attention.self.query``, and a bare ``dense`` would also
    match BERT's pooler (name ``attention.output.dense`` to be precise). The wrapper is set on
    the parent module in place of the Linear (wrap, don't subclass). Base weights are not
    frozen here beyond the wrapped layers: call ``mark_only_lora_as_trainable`` for that.

    Args:
        model: any module; changed in place.
        target_modules: names or name suffixes of the Linear layers to adapt.
        r, lora_alpha, lora_dropout, use_rslora, use_dora: see ``LoRALinear``.

    Returns:
        The qualified names of the replaced layers, in module order.

    Raises:
        ValueError: bad ``r`` / ``lora_alpha`` / ``lora_dropout``; an empty ``target_modules``;
            a target that matches no ``nn.Linear`` (the message lists the Linear names that
            exist); ``model`` already holds LoRA layers (injecting twice).
    """
    check_lora_args(r, lora_alpha, lora_dropout)
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    targets = list(target_modules)
    if not targets:
        raise ValueError("target_modules is empty: name at least one nn.Linear to adapt, e.g. ['query', 'value']")
    already = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    if already:
        raise ValueError(f"model already has LoRA layers (e.g. {already[0]!r}): inject_lora was called twice")
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    unmatched = [t for t in targets if not any(matches_target(n, [t]) for n in linears)]
    if unmatched:
        suffixes = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise ValueError(
            f"target_modules {unmatched} matched no nn.Linear; Linear names end with {suffixes} "
            f"(e.g. {linears[:3]})"
        )
    replaced = [n for n in linears if matches_target(n, targets)]
    for name in replaced:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), r, lora_alpha, lora_dropout, use_rslora, use_dora))
    return replaced


def mark_only_lora_as_trainable(model: nn.Module, modules_to_save: Sequence[str] | str = ("classifier",)) -> list[str]:
    """Freeze every parameter except ``lora_A`` / ``lora_B`` (/ ``lora_magnitude``) and those of ``modules_to_save``.

    Args:
        model: a module with LoRA injected; changed in place.
        modules_to_save: modules that train in full, e.g. the task head ``classifier``; a string is one name.
            PEFT's rule for them (``_set_trainable``): a module whose qualified name ends with an entry, so
            ``classifier`` also trains DistilBERT's new ``pre_classifier``, as PEFT's ``SEQ_CLS`` does.

    Returns:
        The names of the trainable parameters.

    Raises:
        ValueError: ``model`` has no LoRA layer, or a ``modules_to_save`` entry matches no module.
    """
    if not any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("model has no LoRA layers: call inject_lora first")
    if isinstance(modules_to_save, str):
        modules_to_save = [modules_to_save]
    module_names = [name for name, _ in model.named_modules()]
    unmatched = [t for t in modules_to_save if not any(n.endswith(t) for n in module_names if n)]
    if unmatched:
        raise ValueError(f"modules_to_save {unmatched} matched no module of {type(model).__name__}")
    saved_prefixes = [n + "." for n in module_names if n and any(n.endswith(t) for t in modules_to_save)]
    trainable = []
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        train = leaf in LORA_PARAMETERS or any(name.startswith(pre) for pre in saved_prefixes)
        p.requires_grad_(train)
        if train:
            trainable.append(name)
    return trainable


def merge_lora(model: nn.Module) -> None:
    """``merge()`` every ``LoRALinear`` in ``model`` (idempotent), in place: the wrappers stay, so
    ``unmerge_lora`` can take the update out again. Their state-dict keys stay the wrapper's
    (``query.base_layer.weight``): to save a model that transformers loads as a plain one, use
    ``merge_and_unload`` (then ``save_pretrained``)."""
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.merge()


def unmerge_lora(model: nn.Module) -> None:
    """``unmerge()`` every ``LoRALinear`` in ``model`` (idempotent)."""
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every ``LoRALinear`` and put its ``base_layer`` back in its place (in place), as PEFT's
    ``merge_and_unload`` does: ``model`` is then made of plain ``nn.Linear`` layers with the same outputs, and its
    ``state_dict`` / ``save_pretrained`` have the original model's keys (``query.weight``), which
    ``from_pretrained`` loads. There is no way back: the LoRA tensors are gone.

    Returns:
        ``model``.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.base_layer)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return ``(trainable, total)`` parameter counts (numbers of scalars)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
