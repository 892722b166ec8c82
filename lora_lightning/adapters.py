"""Reading a trained adapter for serving: this package's checkpoints (``.ckpt``) and its PEFT export folders.

An adapter is its LoRA tensors (``multi_lora.AdapterWeights``) and what a request needs to read its outputs
(``AdapterInfo``: labels, problem type, ``max_length``, threshold), with the base it was trained on: the model id
and, for checkpoints written since it was saved, a fingerprint of the base's encoder weights
(``base_fingerprint``), so an adapter trained on another base, or on other weights under the same name, is
refused at load, naming the file and what differs. torch, safetensors and json only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lora_lightning.errors import CheckpointError
from lora_lightning.multi_lora import AdapterWeights, LayerUpdate, adapter_bytes, module_states, scaling_of

META_FILE = "lora_lightning.json"  # beside a PEFT export: what PEFT's adapter_config.json has no field for


@dataclass
class AdapterInfo:
    """What a request needs to know of an adapter, and what ``GET /adapters`` shows.

    Attributes:
        name: the adapter's name.
        path: the file or folder it was read from.
        id2label: output id -> name (classes, labels or targets).
        problem_type: ``single_label_classification``, ``multi_label_classification`` or ``regression``.
        max_length: tokens per text it was trained with (longer texts are cut there).
        threshold: multi-label's decision threshold.
        r: its rank(s), one per distinct value.
        target_modules: where its LoRA is.
        trainable_params: scalars it trained (LoRA and its head).
        size_bytes: the file's (or folder's) size on disk.
        base: the base model id it was trained on.
        fingerprint: its base's encoder fingerprint, or ``None`` (a checkpoint from before fingerprints).
    """

    name: str
    path: str
    id2label: dict[int, str]
    problem_type: str
    max_length: int
    threshold: float
    r: list[int]
    target_modules: list[str]
    trainable_params: int
    size_bytes: int
    base: str
    fingerprint: str | None

    def public(self) -> dict:
        """The adapter as ``GET /adapters`` lists it."""
        return {"name": self.name, "labels": list(self.id2label.values()), "problem_type": self.problem_type,
                "r": self.r, "target_modules": self.target_modules, "trainable_params": self.trainable_params,
                "size_bytes": self.size_bytes, "max_length": self.max_length, "base": self.base}


def base_fingerprint(model: nn.Module) -> str:
    """A hash of the base's encoder weights (its ``embeddings`` and ``encoder``, by name, as float32 bytes; a LoRA
    wrapper's ``base_layer`` counts as the layer it wraps, and LoRA tensors are left out): two bases with the same
    fingerprint give the same encoder outputs. The pooler and the head are not in it (an adapter may train them)."""
    body = getattr(model, getattr(model, "base_model_prefix", ""), model)
    h = hashlib.sha256()
    named = []
    for part in ("embeddings", "encoder", "transformer"):
        module = getattr(body, part, None)
        if module is not None:
            named += [(f"{part}.{n}", p) for n, p in module.named_parameters()]
    for name, p in sorted((n.replace(".base_layer.", "."), p) for n, p in named
                          if not n.rsplit(".", 1)[-1].startswith("lora_")):
        h.update(name.encode())
        h.update(p.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def read_adapter(name: str, path: str | Path) -> tuple[AdapterWeights, AdapterInfo]:
    """An adapter from a ``LoRAClassifier`` checkpoint (``.ckpt``) or a PEFT export folder (``export --format adapter``).

    Raises:
        CheckpointError: a missing or unreadable file, a full fine-tuning checkpoint (no adapter), a folder that is
            no PEFT LoRA export; each naming the path.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return _read_peft(name, path)
    from lora_lightning.checkpoint import check_checkpoint

    ckpt = check_checkpoint(path)
    hp = ckpt.get("hyper_parameters", {})
    if hp.get("finetune", "lora") == "full":
        raise CheckpointError(f"adapter {name}: {path} is a full fine-tuning checkpoint: it has no adapter to serve "
                              "on a shared base (export it with --format merged and serve that on its own)")
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    use_rslora = bool(hp.get("use_rslora", False))
    layers = {}
    for key in state:
        if key.endswith(".lora_A"):
            layer = key.removesuffix(".lora_A")
            a, b = state[key], state[f"{layer}.lora_B"]
            layers[layer] = LayerUpdate(a, b, scaling_of(a.shape[0], float(hp.get("lora_alpha", 16.0)), use_rslora),
                                        state.get(f"{layer}.lora_magnitude"))
    rest = {k: v for k, v in state.items() if not k.rsplit(".", 1)[-1].startswith("lora_")}
    modules = _owners(rest)
    weights = AdapterWeights(layers, module_states(rest, modules))
    from lora_lightning.labels import resolve_id2label
    from lora_lightning.tasks import get_task

    task = get_task(hp.get("problem_type") or "single_label_classification")
    id2label = resolve_id2label(int(hp.get("num_labels", 2)), hp.get("id2label"), task.min_labels, task.sst2_names)
    data = ckpt.get("datamodule_hyper_parameters", {})
    info = AdapterInfo(name, str(path), id2label, task.problem_type, int(data.get("max_length") or 128),
                       float(hp.get("threshold", 0.5)), sorted({u.lora_A.shape[0] for u in layers.values()}),
                       list(hp.get("target_modules", [])), sum(v.numel() for v in state.values()), _size(path),
                       str(hp.get("model_name_or_path")), ckpt.get("base_fingerprint"))
    return weights, info


def _owners(state: dict[str, torch.Tensor]) -> list[str]:
    """The modules a flat state of trained-in-full tensors belongs to: the head (``classifier``), a pooler,
    DistilBERT's ``pre_classifier``: each key's owner is its name without the last part (``classifier.weight`` ->
    ``classifier``), RoBERTa's ``classifier.dense.weight`` -> ``classifier`` (the outermost head module)."""
    heads = ("classifier", "score", "pre_classifier", "pooler")
    owners = []
    for key in state:
        parts = key.split(".")
        cut = next((i + 1 for i, p in enumerate(parts) if p in heads), len(parts) - 1)
        owner = ".".join(parts[:cut])
        if owner not in owners:
            owners.append(owner)
    return owners


def _read_peft(name: str, folder: Path) -> tuple[AdapterWeights, AdapterInfo]:
    from safetensors.torch import load_file

    config_path, tensors_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_path.is_file() or not tensors_path.is_file():
        raise CheckpointError(f"adapter {name}: {folder} is not a PEFT LoRA export (needs adapter_config.json and "
                              "adapter_model.safetensors: python -m lora_lightning export --format adapter)")
    try:
        config = json.loads(config_path.read_text())
        state = load_file(str(tensors_path))
    except Exception as error:  # json's ValueError, safetensors' SafetensorError
        raise CheckpointError(f"adapter {name}: {folder} cannot be read ({type(error).__name__}: {error})") from None
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"adapter {name}: {config_path} is a {config.get('peft_type')} adapter, not LoRA")
    state = {k.removeprefix("base_model.model."): v for k, v in state.items()}
    layers = {}
    for key in state:
        if key.endswith(".lora_A.weight"):
            layer = key.removesuffix(".lora_A.weight")
            a, b = state[key], state[f"{layer}.lora_B.weight"]
            layers[layer] = LayerUpdate(a, b, scaling_of(a.shape[0], float(config["lora_alpha"]), bool(config.get("use_rslora"))),
                                        state.get(f"{layer}.lora_magnitude_vector"))
    rest = {k: v for k, v in state.items() if ".lora_" not in k}
    modules = list(config.get("modules_to_save") or _owners(rest))
    meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).is_file() else {}
    head = next((v for k, v in rest.items() if k.endswith("weight") and v.ndim == 2 and k.split(".")[0] in ("classifier", "score")
                 and "dense" not in k), None)
    width = int(meta.get("num_labels") or (head.shape[0] if head is not None else 2))
    id2label = {int(k): v for k, v in (meta.get("id2label") or {i: f"LABEL_{i}" for i in range(width)}).items()}
    info = AdapterInfo(name, str(folder), id2label, meta.get("problem_type", "single_label_classification"),
                       int(meta.get("max_length") or 128), float(meta.get("threshold", 0.5)),
                       sorted({u.lora_A.shape[0] for u in layers.values()}), list(config.get("target_modules", [])),
                       sum(v.numel() for v in state.values()), _size(folder), str(config.get("base_model_name_or_path")),
                       meta.get("base_fingerprint"))
    return AdapterWeights(layers, module_states(rest, modules)), info


def adapter_memory(weights: AdapterWeights) -> int:
    """Bytes the adapter's tensors take once loaded (``multi_lora.adapter_bytes``)."""
    return adapter_bytes(weights)
