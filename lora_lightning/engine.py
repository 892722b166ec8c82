"""``Engine``: one frozen base, many adapters, requests answered in one forward per batch (no HTTP here).

Each row names its adapter; the rows are tokenised with the base's tokenizer, each cut at its own adapter's
``max_length``; one forward of ``multi_lora.MultiAdapterModel`` runs the base's matmuls once for the batch and each
row's LoRA update and head from its adapter; each row's outputs are read as its adapter's problem type says
(``tasks``) and answered as transformers' ``pipeline("text-classification")`` answers: ``label`` and ``score``
(every label's score on request); multi-label rows also get ``labels`` (those at or above the adapter's threshold),
regression rows the value as ``score``. The last layer runs for ``[CLS]`` only, as in training
(``backbone.FirstTokenOnly``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lora_lightning.adapters import AdapterInfo, base_fingerprint, read_adapter
from lora_lightning.backbone import last_layer_first_token_only, load_backbone
from lora_lightning.errors import CheckpointError
from lora_lightning.hub import load_tokenizer, resolve_model_path
from lora_lightning.multi_lora import MultiAdapterModel, adapter_bytes
from lora_lightning.tasks import get_task


@dataclass
class Row:
    """One text to answer: its adapter, the text (and a second text for a pair), and whether to give every score."""

    adapter: str
    text: str
    text_pair: str | None = None
    all_scores: bool = False


def build_module(name: str, base_module: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """An adapter's copy of a module it trained in full: the base's module, each Linear resized to the adapter's
    tensors (a head of K outputs), then loaded with them (strict: every tensor, no other)."""
    module = copy.deepcopy(base_module)
    for key, tensor in state.items():
        owner_name, _, leaf = key.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if isinstance(owner, nn.Linear) and leaf == "weight" and tuple(owner.weight.shape) != tuple(tensor.shape):
            resized = nn.Linear(tensor.shape[1], tensor.shape[0], bias=owner.bias is not None,
                                dtype=owner.weight.dtype, device=owner.weight.device)
            if owner_name:
                parent, _, child = owner_name.rpartition(".")
                setattr(module.get_submodule(parent) if parent else module, child, resized)
            else:
                module = resized
    module.load_state_dict({k: v.to(next(module.parameters()).dtype) for k, v in state.items()}, strict=True)
    return module.eval().requires_grad_(False)


class Engine:
    """One frozen base and the adapters trained on it.

    Args:
        model_name_or_path: the base (Hub id, local folder, or the packaged MiniLM), loaded once.
        torch_dtype: the base's dtype (``float32``; ``bfloat16`` halves its memory).
        device: where it runs (``cpu``, ``cuda``).

    Raises:
        ModelNotFoundError, ModelFileError: the base cannot be loaded (see ``backbone.load_backbone``).
    """

    def __init__(self, model_name_or_path: str = "sentence-transformers/all-MiniLM-L6-v2", torch_dtype: str = "float32",
                 device: str = "cpu") -> None:
        base, _ = load_backbone(model_name_or_path, torch_dtype)
        self.name = model_name_or_path
        self.fingerprint = base_fingerprint(base)
        self.first_token_only = last_layer_first_token_only(base)
        self.model = MultiAdapterModel(base.to(device))
        self.device = torch.device(device)
        self.tokenizer = load_tokenizer(model_name_or_path)
        self.adapters: dict[str, AdapterInfo] = {}
        self.memory: dict[str, int] = {}

    def _same_base(self, info: AdapterInfo) -> str | None:
        """What differs between the adapter's base and this one (``None``: nothing)."""
        if info.fingerprint is not None:
            if info.fingerprint != self.fingerprint:
                return (f"it was trained on {info.base!r} (weights {info.fingerprint}), this server's base is {self.name!r} "
                        f"(weights {self.fingerprint})")
            return None
        ours = {self.name, os.path.abspath(resolve_model_path(self.name))}
        theirs = {info.base, os.path.abspath(resolve_model_path(info.base))}
        if not ours & theirs:
            return f"it was trained on {info.base!r}, this server's base is {self.name!r}"
        return None

    def add(self, name: str, path: str) -> AdapterInfo:
        """Load the adapter at ``path`` (a checkpoint or a PEFT export folder) as ``name``; the base is not reloaded.

        Raises:
            CheckpointError: an unreadable file, a full fine-tuning checkpoint, an adapter on another base, one whose
                layers or shapes do not fit this base, a name already taken; each naming the file.
        """
        if name in self.adapters:
            raise CheckpointError(f"adapter {name}: the name is taken (by {self.adapters[name].path})")
        weights, info = read_adapter(name, path)
        differs = self._same_base(info)
        if differs:
            raise CheckpointError(f"adapter {name}: {path}: {differs}: an adapter only fits the base it was trained on")
        try:
            self.model.add_adapter(name, weights, build_module)
        except ValueError as error:
            raise CheckpointError(f"adapter {name}: {path} does not fit the base {self.name!r}: {error}") from None
        self.adapters[name], self.memory[name] = info, adapter_bytes(weights)
        return info

    def remove(self, name: str) -> None:
        """Unload adapter ``name`` (the others and the base are untouched)."""
        self.model.remove_adapter(name)
        del self.adapters[name], self.memory[name]

    def encode(self, rows: Sequence[Row]) -> tuple[dict[str, torch.Tensor], list[bool]]:
        """Tokenise ``rows``, each cut at its adapter's ``max_length``; padded to the longest. Returns the model's
        inputs ``(B, T)`` and, per row, whether its text was cut."""
        features, truncated = [], []
        for row in rows:
            limit = self.adapters[row.adapter].max_length
            args = (row.text, row.text_pair) if row.text_pair is not None else (row.text,)
            full = len(self.tokenizer(*args, verbose=False)["input_ids"])
            features.append(self.tokenizer(*args, truncation=True, max_length=limit))
            truncated.append(full > limit)
        batch = self.tokenizer.pad(features, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}, truncated

    @torch.no_grad()
    def outputs(self, rows: Sequence[Row]) -> tuple[list[torch.Tensor], list[bool]]:
        """Each row's outputs ``(K,)`` (probabilities, or values), from its adapter, in one forward; and whether
        each text was cut.

        Raises:
            KeyError: an adapter that is not loaded.
        """
        order = sorted(range(len(rows)), key=lambda i: self.model.slots[rows[i].adapter])  # each adapter's rows a slice
        ordered = [rows[i] for i in order]
        inputs, cut = self.encode(ordered)
        with self.first_token_only:
            logits = self.model([row.adapter for row in ordered], **inputs).logits.float()
        out, truncated = [None] * len(rows), [False] * len(rows)
        for i, row, values, c in zip(order, ordered, logits, cut):
            out[i] = self.task(row.adapter).outputs(values[: len(self.adapters[row.adapter].id2label)].unsqueeze(0))[0].cpu()
            truncated[i] = c
        return out, truncated

    def task(self, name: str):
        """Adapter ``name``'s problem type (``tasks.Task``), for its outputs."""
        info = self.adapters[name]
        return get_task(info.problem_type)(list(info.id2label.values()), info.threshold)

    def predict(self, rows: Sequence[Row]) -> list[dict]:
        """Answer ``rows`` in order, as transformers' pipeline does: ``{"label", "score"}`` (the best class and its
        probability; for regression the target's name and its value), ``"scores"`` (every output's) on request,
        ``"labels"`` for multi-label (at or above the threshold), and ``"truncated"``."""
        outputs, truncated = self.outputs(rows)
        return [{**self.task(row.adapter).answer(values.tolist(), row.all_scores), "truncated": cut}
                for row, values, cut in zip(rows, outputs, truncated)]
