"""Many LoRA adapters on one frozen base, in one forward: each row of a batch gets its own adapter's update.

Hu et al. 2021 (arXiv:2106.09685): an adapter is ``scaling * B @ A`` per adapted Linear plus its own head. Here a
batch mixes adapters: every ``nn.Linear`` that any adapter adapts becomes a ``MultiLoRALinear``, which runs the
base matmul once for the whole batch, ``(B, T, in) -> (B, T, out)``, then, per adapter present in the batch, the
rank-``r`` update of that adapter's rows only (grouped: the engine sorts a batch by adapter, so each
adapter's rows are a slice: two thin matmuls on a view, added in place)::

    h[rows_a] = W0 x[rows_a] + b + scaling_a * B_a A_a x[rows_a]           for each adapter a in the batch

An adapter's group of at least ``64 r`` tokens runs instead as one matmul with its weight merged for that forward,
``(W0 + scaling_a B_a A_a) x[rows_a] + b`` (the same value; chosen by measurement, ``MultiLoRALinear.forward``).

DoRA rows (Liu et al. 2024, arXiv:2402.09353) are rescaled as ``LoRALinear`` does in eval mode:
``m_a / ||W0 + scaling_a B_a A_a|| * (W0 x + scaling_a B_a A_a x) + b``, the row norms computed once when the
adapter is added. Each module an adapter trains in full (its head: ``classifier``; a pooler it trained) becomes a
``MultiHead`` that sends each row to that adapter's copy (outputs of other widths padded with zeros, sliced by the
caller). Rows of an adapter that does not adapt a layer get the base layer alone there.

Adding or removing an adapter touches only its own tensors: the base is never reloaded. torch only: it knows
nothing of transformers, checkpoints or HTTP (``adapters.py`` reads the files, ``engine.py`` tokenises).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["AdapterWeights", "LayerUpdate", "Router", "MultiLoRALinear", "MultiHead", "MultiAdapterModel"]


@dataclass
class LayerUpdate:
    """One adapted Linear of one adapter.

    Attributes:
        lora_A: ``(r, in_features)``.
        lora_B: ``(out_features, r)``.
        scaling: ``lora_alpha / r`` (rsLoRA: ``lora_alpha / sqrt(r)``).
        magnitude: DoRA's ``(out_features,)`` trained magnitude, or ``None``.
    """

    lora_A: torch.Tensor
    lora_B: torch.Tensor
    scaling: float
    magnitude: torch.Tensor | None = None


@dataclass
class AdapterWeights:
    """Everything an adapter adds to the base.

    Attributes:
        layers: qualified Linear name (``bert.encoder.layer.0.attention.self.query``) -> its ``LayerUpdate``.
        modules: qualified name of each module trained in full (``classifier``) -> ``{parameter name: tensor}``
            (``weight``, ``bias``, ``dense.weight``, ...), the module's own state.
    """

    layers: dict[str, LayerUpdate]
    modules: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


class Router:
    """Which adapter each row of the current batch belongs to, shared by every multi-adapter module of a model.

    ``set(slots)`` with ``slots (B,)`` (an int per row) groups the rows once per batch: ``groups`` is a list of
    ``(slot, rows)``, ``rows`` a ``slice`` when the slot's rows are contiguous (the engine sorts a batch by adapter,
    so they are: each layer then works on views, in place), else a long tensor of row indices; in slot order.
    """

    def __init__(self) -> None:
        self.groups: list[tuple[int, slice | torch.Tensor]] = []

    def set(self, slots: torch.Tensor) -> None:
        groups = []
        for s in torch.unique(slots).tolist():
            rows = (slots == s).nonzero(as_tuple=True)[0]
            start, stop = int(rows[0]), int(rows[-1]) + 1
            groups.append((int(s), slice(start, stop) if stop - start == rows.numel() else rows))
        self.groups = groups


MERGE_MIN_TOKENS_PER_RANK = 64
"""A group of ``n`` tokens of one adapter of rank ``r`` runs with that adapter's merged weight when ``n >= 64 r``."""


def _count(rows: slice | torch.Tensor) -> int:
    """How many rows ``rows`` names."""
    return rows.stop - rows.start if isinstance(rows, slice) else rows.numel()


def _take(x: torch.Tensor, rows: slice | torch.Tensor) -> torch.Tensor:
    """The rows of ``x`` (a view for a slice)."""
    return x[rows] if isinstance(rows, slice) else x.index_select(0, rows)


def _put(out: torch.Tensor, rows: slice | torch.Tensor, part: torch.Tensor) -> None:
    """Write ``part`` into ``out``'s ``rows`` (in place)."""
    if isinstance(rows, slice):
        out[rows] = part
    else:
        out.index_copy_(0, rows, part)


def _add(out: torch.Tensor, rows: slice | torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``out`` with ``delta`` added to its ``rows`` (in place; ``out`` is a fresh tensor of this forward)."""
    if isinstance(rows, slice):
        out[rows] += delta
        return out
    return out.index_add_(0, rows, delta)


class MultiLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` with any number of adapters' updates, each applied to its own rows.

    Args:
        base_layer: the shared Linear (its weights are never changed).
        router: the model's ``Router`` (rows of the batch -> adapter slot).
    """

    def __init__(self, base_layer: nn.Linear, router: Router) -> None:
        super().__init__()
        self.base_layer, self.router = base_layer, router
        self.updates: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}  # A, scaling * B, DoRA

    def add(self, slot: int, update: LayerUpdate) -> None:
        """Hold ``update`` for ``slot``; DoRA's ``m / ||W0 + dW||`` is computed here, once.

        Raises:
            ValueError: shapes that do not fit this layer, naming both.
        """
        out_features, in_features = self.base_layer.weight.shape
        a, b = update.lora_A, update.lora_B
        if a.shape[1] != in_features or b.shape[0] != out_features or a.shape[0] != b.shape[1]:
            raise ValueError(f"lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit a Linear of "
                             f"({out_features}, {in_features})")
        dtype, device = self.base_layer.weight.dtype, self.base_layer.weight.device
        a, b = a.to(device, torch.float32), b.to(device, torch.float32)
        scale = None
        if update.magnitude is not None:
            weight = self.base_layer.weight.float() + (b @ a) * update.scaling
            scale = (update.magnitude.to(device, torch.float32) / torch.linalg.norm(weight, dim=1)).to(dtype)
        self.updates[slot] = (a.to(dtype), (b * update.scaling).to(dtype), scale)  # scaling folded into B, once

    def remove(self, slot: int) -> None:
        self.updates.pop(slot, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, ..., in_features) -> (B, ..., out_features)``: each adapter's update on its own rows.

        Chosen by measurement (``benchmarks/serve_bench.py``, docs/serving.md): an adapter's group of ``n`` tokens
        with ``n >= MERGE_MIN_TOKENS_PER_RANK * r`` runs as one matmul with its weight merged for this forward,
        ``W0 + scaling B A`` (merging costs ``r / n <= 1/64`` of the group's matmul); smaller groups add their two
        thin matmuls to the base matmul, run once for the whole batch when no group of it is merged, else on their
        own rows.
        """
        groups = self.router.groups
        if not any(slot in self.updates for slot, _ in groups):
            return self.base_layer(x)
        tokens = x.numel() // x.shape[-1] // x.shape[0]  # per row
        big = [slot in self.updates and _count(rows) * tokens >= MERGE_MIN_TOKENS_PER_RANK * self.updates[slot][0].shape[0]
               for slot, rows in groups]
        if not any(big):
            return self._deltas(x, self.base_layer(x), groups)
        weight, bias = self.base_layer.weight, self.base_layer.bias
        parts = []
        for (slot, rows), merge in zip(groups, big):
            xs = _take(x, rows)
            if merge:
                a, b, scale = self.updates[slot]
                merged = torch.addmm(weight, b, a)  # (out, in): W0 + scaling B A (scaling is folded into B)
                if scale is not None:  # DoRA: m / ||W0 + dW|| scales W0 x + dW x, not the bias
                    merged = merged * scale[:, None]
                parts.append(torch.nn.functional.linear(xs, merged, bias))
            else:
                parts.append(self._deltas(xs, self.base_layer(xs), [(slot, slice(0, xs.shape[0]))]))
        if len(parts) == 1:
            return parts[0]  # one adapter: its group is the whole batch
        out = parts[0].new_empty((x.shape[0], *parts[0].shape[1:]))
        for (_, rows), part in zip(groups, parts):
            _put(out, rows, part)
        return out

    def _deltas(self, x: torch.Tensor, out: torch.Tensor, groups) -> torch.Tensor:
        """``out = W0 x + b`` for every row of ``x`` with each group's update added to its rows (in place)."""
        bias = self.base_layer.bias
        for slot, rows in groups:
            update = self.updates.get(slot)
            if update is None:
                continue
            a, b, scale = update
            delta = torch.nn.functional.linear(torch.nn.functional.linear(_take(x, rows), a), b)  # (b, .., r) -> (b, .., out)
            if scale is not None:  # DoRA: m / ||W|| rescales the whole output, as LoRALinear does
                base = _take(out, rows)
                delta = (scale - 1) * (base if bias is None else base - bias) + scale * delta
            out = _add(out, rows, delta)
        return out

    def extra_repr(self) -> str:
        return f"adapters={sorted(self.updates)}"


class MultiHead(nn.Module):
    """A module trained in full by some adapters (their head), with each row sent to its adapter's copy; rows of an
    adapter without one use the base's module. Outputs whose last size differs across adapters (heads of other
    widths) are padded with zeros to the widest: the caller keeps the first ``num_labels`` of each row."""

    def __init__(self, base_module: nn.Module, router: Router) -> None:
        super().__init__()
        self.base_module, self.router = base_module, router
        self.copies = nn.ModuleDict()

    def add(self, slot: int, module: nn.Module) -> None:
        self.copies[str(slot)] = module

    def remove(self, slot: int) -> None:
        if str(slot) in self.copies:
            del self.copies[str(slot)]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``x: (B, ...)`` -> ``(B, ..., width)``, each row from its adapter's module."""
        parts = []
        for slot, rows in self.router.groups:
            module = self.copies[str(slot)] if str(slot) in self.copies else self.base_module
            parts.append((rows, module(_take(x, rows), *args, **kwargs)))
        if len(parts) == 1:
            return parts[0][1]
        width = max(p.shape[-1] for _, p in parts)
        first = parts[0][1]
        out = first.new_zeros((x.shape[0], *first.shape[1:-1], width))
        for rows, p in parts:
            if p.shape[-1] < width:
                p = torch.nn.functional.pad(p, (0, width - p.shape[-1]))
            _put(out, rows, p)
        return out


class MultiAdapterModel(nn.Module):
    """One frozen base model serving many adapters, each row of a batch with its own.

    Args:
        model: the base, e.g. a transformers ``BertForSequenceClassification`` (any module whose forward takes
            the batch; its Linears and head modules are found by name). Frozen and put in eval mode here.

    Use: ``add_adapter(name, weights)``, then ``forward(adapter_rows, **inputs)`` with ``adapter_rows`` a list of
    adapter names, one per row; ``remove_adapter(name)``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.router = Router()
        self.slots: dict[str, int] = {}
        self._next = 0

    def _wrap(self, name: str, kind: type) -> nn.Module:
        """The ``kind`` wrapper at ``name``, set in the base's place the first time an adapter needs it."""
        current = self.model.get_submodule(name)
        if isinstance(current, kind):
            return current
        if kind is MultiLoRALinear and not isinstance(current, nn.Linear):
            raise ValueError(f"{name!r} is a {type(current).__name__} in the base, not an nn.Linear")
        wrapper = kind(current, self.router)
        parent, _, child = name.rpartition(".")
        setattr(self.model.get_submodule(parent) if parent else self.model, child, wrapper)
        return wrapper

    def add_adapter(self, name: str, weights: AdapterWeights, build_module) -> None:
        """Add adapter ``name``: its LoRA updates and its modules trained in full.

        Args:
            name: the adapter's name (requests name it).
            weights: its tensors (``adapters.read_adapter``).
            build_module: ``(qualified name, base module, state) -> module``: the adapter's copy of a module it
                trained in full (its head, of its own width).

        Raises:
            ValueError: a name already held; a layer the base does not have, or whose shapes differ (nothing of the
                adapter is kept then).
        """
        if name in self.slots:
            raise ValueError(f"an adapter named {name!r} is already loaded")
        slot, self._next = self._next, self._next + 1
        names = {n for n, _ in self.model.named_modules()}
        missing = [n for n in list(weights.layers) + list(weights.modules) if n not in names]
        if missing:
            raise ValueError(f"the base has no module {missing[0]!r}")
        try:
            for layer, update in weights.layers.items():
                self._wrap(layer, MultiLoRALinear).add(slot, update)
            for module, state in weights.modules.items():
                head = self._wrap(module, MultiHead)
                head.add(slot, build_module(module, head.base_module, state))
        except (ValueError, RuntimeError) as error:
            self._drop(slot)
            raise ValueError(str(error)) from None
        self.slots[name] = slot

    def remove_adapter(self, name: str) -> None:
        """Forget adapter ``name``'s tensors (the base and the other adapters are untouched)."""
        self._drop(self.slots.pop(name))

    def _drop(self, slot: int) -> None:
        for module in self.model.modules():
            if isinstance(module, (MultiLoRALinear, MultiHead)):
                module.remove(slot)

    @torch.no_grad()
    def forward(self, adapter_rows: list[str], **inputs) -> torch.Tensor:
        """``adapter_rows``: one adapter name per row; ``inputs``: the model's (``input_ids (B, T)``, ...) ->
        the model's output (its ``logits (B, K_max)`` for a classifier: K of each row's adapter, zero-padded).

        Raises:
            KeyError: an adapter name that is not loaded.
        """
        slots = torch.tensor([self.slots[a] for a in adapter_rows], dtype=torch.long)
        self.router.set(slots.to(next(self.model.parameters()).device))
        try:
            return self.model(**inputs)
        finally:
            self.router.groups = []


def adapter_bytes(weights: AdapterWeights) -> int:
    """Bytes of an adapter's tensors as held (its LoRA matrices, DoRA magnitudes and modules trained in full)."""
    tensors: Iterable[torch.Tensor] = [t for u in weights.layers.values()
                                       for t in (u.lora_A, u.lora_B, u.magnitude) if t is not None]
    tensors = list(tensors) + [t for state in weights.modules.values() for t in state.values()]
    return sum(t.numel() * t.element_size() for t in tensors)


def scaling_of(r: int, lora_alpha: float, use_rslora: bool) -> float:
    """``lora_alpha / r``, or rsLoRA's ``lora_alpha / sqrt(r)``."""
    return lora_alpha / (math.sqrt(r) if use_rslora else r)


def module_states(state: Mapping[str, torch.Tensor], modules: Iterable[str]) -> dict[str, dict[str, torch.Tensor]]:
    """``{module: {parameter: tensor}}`` for every module of ``modules`` from a flat ``state`` of qualified names."""
    out: dict[str, dict[str, torch.Tensor]] = {m: {} for m in modules}
    for key, tensor in state.items():
        owner = max((m for m in out if key.startswith(m + ".")), key=len, default=None)
        if owner is not None:
            out[owner][key[len(owner) + 1:]] = tensor
    return out
