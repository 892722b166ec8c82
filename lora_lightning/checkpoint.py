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

from lora_lightning.errors import CheckpointError, LoRALightningWarning, option
from lora_lightning.labels import ID2LABEL, resolve_id2label

# Options that decide which tensors exist and what they mean: a checkpoint is only valid with its own.
STRUCTURE_OPTIONS = ("finetune", "r", "lora_alpha", "target_modules", "train_pooler", "use_rslora", "use_dora")
# The classes, which decide the head's width and what each output means: a checkpoint is only valid with
# its own too. Apart from STRUCTURE_OPTIONS because they come from the data (linked from data.num_labels /
# data.id2label by the CLI), so a checkpoint cannot set them: they are checked, never copied.
LABEL_OPTIONS = ("num_labels", "id2label", "problem_type")
# Options that shape the optimizer's state: with loraplus_lr_ratio, lora_B is a second parameter group. A
# resumed fit cannot change whether it is set.
OPTIMIZER_SHAPE_OPTIONS = ("loraplus_lr_ratio",)
# Options whose values a resumed fit takes from the checkpoint: its optimizer state (learning rates, weight
# decay, LoRA+'s ratio), its schedule (warm-up) and the dropout it was trained with.
TRAINING_OPTIONS = ("learning_rate", "weight_decay", "warmup_ratio", "lora_dropout", "loraplus_lr_ratio",
                    "backbone_dropout", "class_weights")
# What these options were before they existed as options (older checkpoints: SST-2's two classes).
STRUCTURE_DEFAULTS = {"finetune": "lora", "use_rslora": False, "use_dora": False, "num_labels": 2, "id2label": dict(ID2LABEL),
                      "problem_type": "single_label_classification"}


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
        raise CheckpointError(unreadable(f"--ckpt_path {path}", error)) from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"--ckpt_path {path}: a PyTorch file, but not a Lightning checkpoint (no 'state_dict')")
    return state


def unreadable(what: str, error: Exception) -> str:
    """The line for a checkpoint ``torch.load(weights_only=True)`` refused: an object it may not load (named, with
    what to do), or a file that is no checkpoint at all (truncated, or another kind of file)."""
    import re

    text = str(error)
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if refused:
        return (f"{what}: holds a {refused.group(1)} object, which safe loading (weights_only) refuses: it was saved "
                "with an option of that type (a pathlib.Path, a numpy number). Load it once with "
                "torch.load(path, weights_only=False) if you trust it, turn the value into a str/int/float and save "
                "it again, or re-train with this version, which stores plain values")
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{what}: not a readable checkpoint (truncated, or another kind of file): {type(error).__name__}: {first}"


def read_hyperparameters(checkpoint_path) -> dict:
    """The model hyperparameters saved in a checkpoint (a path or a file-like object), loaded safely.

    Raises:
        CheckpointError: the file cannot be loaded (see ``unreadable``).
    """
    try:
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(unreadable(str(checkpoint_path), error)) from None
    finally:
        if hasattr(checkpoint_path, "seek"):
            checkpoint_path.seek(0)
    return dict(ckpt.get("hyper_parameters", {})) if isinstance(ckpt, dict) else {}


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
            flag = option("model", name)
            fix = (f"pass --{flag} {saved[name]!r} (or the run's config.yaml)" if flag != name else
                   f"build the model with {name}={saved[name]!r} (or leave {name} out of load_from_checkpoint)")
            raise CheckpointError(f"checkpoint was trained with {flag}={saved[name]!r} but this model has "
                                  f"{flag}={current[name]!r}, which changes what its weights mean: {fix}")
    was, now = saved.get("problem_type"), current.get("problem_type", "single_label_classification")
    if was != now:
        raise CheckpointError(f"checkpoint was trained with {option('model', 'problem_type')}={was} but this model is "
                              f"{now}: its head's outputs mean other things; pass the run's own --config <run>/config.yaml "
                              f"(or {option('data', 'problem_type')} {was})")
    trained, here = label_names(saved), label_names(current)
    if trained != here:
        fix = ("pass the run's own --config <run>/config.yaml" if option("model", "id2label") != "id2label" else
               "build the model with the checkpoint's num_labels and id2label (or leave them out of load_from_checkpoint)")
        raise CheckpointError(f"checkpoint was trained with labels {trained}, this model has {here} "
                              f"({option('model', 'id2label')}, from the data's train file): {fix}")


def check_resume(saved: Mapping, current: Mapping) -> dict:
    """What a resumed ``fit`` may change and what it may not, beyond ``check_options``.

    Returns:
        ``{name: saved value}`` of the ``TRAINING_OPTIONS`` that differ (the checkpoint's optimizer state and
        schedule carry its own values on; the caller says so in one line each).

    Raises:
        CheckpointError: an ``OPTIMIZER_SHAPE_OPTIONS`` option set in one and not the other (the optimizer state's
            parameter groups would not fit), naming it and both values.
    """
    for name in OPTIMIZER_SHAPE_OPTIONS:
        was, now = saved.get(name), current.get(name)
        if (was is None) != (now is None):
            flag = option("model", name)
            raise CheckpointError(f"checkpoint was trained with {flag}={was!r} but this run has {flag}={now!r}: its "
                                  f"optimizer state has {1 if was is None else 2} parameter group(s), this run's "
                                  f"{1 if now is None else 2}; resume with {flag}={was!r} (or start a new run)")
    return {name: saved[name] for name in TRAINING_OPTIONS
            if name in saved and name in current and normalise_hparam(saved[name]) != normalise_hparam(current[name])}


def resume_said(saved: Mapping, hp, class_weights: list | None = None) -> list[str]:
    """What a resumed ``fit`` says of each option its checkpoint was trained with otherwise (``check_resume``), one line
    each; the schedule's warm-up and the class weights are taken from the checkpoint into ``hp`` (in place)."""
    lines = []
    for name, value in check_resume(saved, hp).items():
        flag, mine = option("model", name), hp[name]
        if name == "warmup_ratio":  # the schedule is this model's: it goes on with the checkpoint's
            hp["warmup_ratio"] = value
            lines.append(f"resuming: {flag}={value!r} from the checkpoint (this model has {mine!r}): its schedule goes on")
        elif name == "class_weights":  # the loss of the run goes on as it was
            hp["class_weights"] = value
            lines.append(f"resuming: {flag}={value!r} from the checkpoint (this model has {mine!r}): the run's loss goes "
                         f"on with its weights {class_weights}")
        elif name in ("learning_rate", "weight_decay", "loraplus_lr_ratio"):  # restored with the optimizer state
            lines.append(f"resuming: the checkpoint was trained with {flag}={value!r}, this model has {mine!r}; the run "
                         "goes on with the checkpoint's (its optimizer state holds it)")
        else:  # dropout: the modules are built
            lines.append(f"resuming: the checkpoint was trained with {flag}={value!r}, this model has {mine!r}, used from here")
    return lines


def check_overrides(saved: Mapping, overrides: Mapping) -> None:
    """Refuse ``load_from_checkpoint`` keyword arguments that change what the checkpoint's weights mean (a structure
    option, the classes, the problem type), before Lightning writes them over the saved values.

    Raises:
        CheckpointError: naming the option and the checkpoint's value.
    """
    given = {k: v for k, v in overrides.items() if k in STRUCTURE_OPTIONS + LABEL_OPTIONS}
    trained = saved.get("num_labels", 2)
    if "num_labels" in given and given["num_labels"] != trained:
        raise CheckpointError(f"checkpoint was trained with num_labels={trained} but this model has "
                              f"num_labels={given['num_labels']}, which changes what its weights mean: "
                              "leave num_labels out of load_from_checkpoint")
    if given:
        check_options(saved, {**saved, **given})


def label_names(options: Mapping) -> list[str]:
    """The class names by index that hyperparameters give (``num_labels``, ``id2label``; neither: SST-2's).

    Raises:
        OptionError: they are not valid (see ``labels.resolve_id2label``).
    """
    if not any(name in options for name in LABEL_OPTIONS):
        options = STRUCTURE_DEFAULTS
    from lora_lightning.tasks import get_task

    task = get_task(options.get("problem_type") or "single_label_classification")
    return list(resolve_id2label(options.get("num_labels", 2), options.get("id2label"), task.min_labels,
                                 task.sst2_names).values())


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
