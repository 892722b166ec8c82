"""Adapter-sized checkpoints: what a checkpoint keeps, and whether one fits a model.

A ``LoRAClassifier`` checkpoint holds only the trainable tensors (LoRA ``lora_A``/``lora_B``, the
new head, anything else set trainable), the optimizer/scheduler state and the hyperparameters; the
frozen base is rebuilt from ``model_name_or_path`` on load. This module knows nothing of Lightning's
classes: it works on the checkpoint ``dict`` and on plain state dicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from lora_lightning.errors import CheckpointError
from lora_lightning.labels import ID2LABEL, resolve_id2label

# Options that decide which tensors exist and what they mean: a checkpoint is only valid with its own.
STRUCTURE_OPTIONS = ("finetune", "r", "lora_alpha", "target_modules", "train_pooler", "use_rslora", "use_dora")
# The classes, which decide the head's width and what each output means: a checkpoint is only valid with
# its own too. Apart from STRUCTURE_OPTIONS because they come from the data (linked from data.num_labels /
# data.id2label by the CLI), so a checkpoint cannot set them: they are checked, never copied.
LABEL_OPTIONS = ("num_labels", "id2label")
# What these options were before they existed as options (older checkpoints: SST-2's two classes).
STRUCTURE_DEFAULTS = {"finetune": "lora", "use_rslora": False, "use_dora": False, "num_labels": 2, "id2label": dict(ID2LABEL)}


def normalise_hparam(value):
    """Compare hyperparameters across YAML/pickle round trips: tuples as lists (and 16 == 16.0 as is)."""
    return list(value) if isinstance(value, (list, tuple)) else value


def check_checkpoint(ckpt_path: str | Path) -> dict:
    """Refuse, in one line, a ``--ckpt_path`` that is missing, empty, truncated or not a checkpoint.

    Loads with ``weights_only=True``: no pickled code runs.

    Returns:
        the loaded checkpoint ``dict`` (on CPU).

    Raises:
        CheckpointError: naming the path and what is wrong with it.
    """
    if not str(ckpt_path).strip():
        raise CheckpointError("--ckpt_path is empty (a shell variable that a glob left empty?): pass a .ckpt file")
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"--ckpt_path {path}: file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"--ckpt_path {path}: file is empty (0 bytes)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... by cause
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        raise CheckpointError(f"--ckpt_path {path}: not a readable checkpoint (truncated, or another kind of file): {reason}") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"--ckpt_path {path}: a PyTorch file, but not a Lightning checkpoint (no 'state_dict')")
    return state


def keep_trainable(state_dict: Mapping[str, torch.Tensor], trainable: Mapping[str, torch.Size]) -> dict:
    """The entries of ``state_dict`` whose keys are in ``trainable``: an adapter-sized state."""
    return {k: v for k, v in state_dict.items() if k in trainable}


def check_options(saved: Mapping, current: Mapping) -> None:
    """Refuse a checkpoint whose structure options (``STRUCTURE_OPTIONS``) or classes
    (``LABEL_OPTIONS``: ``num_labels`` and the names ``id2label``, compared as the list of names by
    class index, so ``{"0": ...}`` and ``{0: ...}`` are equal) differ from the model's.

    Checkpoints from before an option existed had its default (``STRUCTURE_DEFAULTS``).

    Raises:
        CheckpointError: naming ``model.<option>``, both values, and what to pass; or, for the classes,
            both label lists (one line).
    """
    saved = {**STRUCTURE_DEFAULTS, **saved}
    for name in STRUCTURE_OPTIONS:
        if name in saved and name in current and normalise_hparam(saved[name]) != normalise_hparam(current[name]):
            raise CheckpointError(
                f"checkpoint was trained with model.{name}={saved[name]!r} but this run has "
                f"model.{name}={current[name]!r}: pass --model.{name} {saved[name]!r} (or the run's config.yaml)"
            )
    trained, here = label_names(saved), label_names(current)
    if trained != here:
        raise CheckpointError(f"checkpoint was trained with labels {trained}, this model has {here} "
                              "(model.id2label, from the data's train file): pass the run's own --config <run>/config.yaml")


def label_names(options: Mapping) -> list[str]:
    """The class names by index that hyperparameters give (``num_labels``, ``id2label``; neither: SST-2's).

    Raises:
        OptionError: they are not valid (see ``labels.resolve_id2label``).
    """
    if not any(name in options for name in LABEL_OPTIONS):
        options = STRUCTURE_DEFAULTS
    return list(resolve_id2label(options.get("num_labels", 2), options.get("id2label")).values())


def fill_frozen(state: dict, trainable: Mapping[str, torch.Size], full: Mapping[str, torch.Tensor], model: str) -> None:
    """Check that ``state`` fits a model, then add the model's frozen tensors to it (in place).

    Args:
        state: the checkpoint's ``state_dict`` (trainable tensors; a full state dict is accepted too).
        trainable: key -> shape of every tensor the model trains (all must be in ``state``).
        full: the model's whole state dict; keys of ``state`` outside ``trainable`` must be in it,
            with the same shapes. Its tensors fill in what ``state`` lacks (the frozen base).
        model: a short description of the model for the error message.

    Raises:
        CheckpointError: a trainable tensor missing from the checkpoint, a shape mismatch (another
            ``r``, another base), or a key the model does not have; the first one found, by key.
    """
    for key, shape in trainable.items():
        if key not in state:
            raise CheckpointError(f"checkpoint does not fit ({model}): key {key!r} of shape {tuple(shape)} is missing from it")
        if state[key].shape != shape:
            raise CheckpointError(
                f"checkpoint does not fit ({model}): {key!r} has shape {tuple(state[key].shape)} "
                f"in the checkpoint but {tuple(shape)} in the model"
            )
    for key, value in state.items():
        if key in trainable:
            continue
        if key not in full:
            raise CheckpointError(f"checkpoint does not fit ({model}): unexpected key {key!r} of shape {tuple(value.shape)}")
        if value.shape != full[key].shape:
            raise CheckpointError(
                f"checkpoint does not fit ({model}): {key!r} has shape {tuple(value.shape)} "
                f"in the checkpoint but {tuple(full[key].shape)} in the model"
            )
    for key, value in full.items():  # the frozen base comes from model_name_or_path, already loaded
        state.setdefault(key, value)
