"""Export a trained checkpoint out of this package: a merged transformers folder or a PEFT adapter.

``python -m lora_lightning export --ckpt_path CKPT --output_dir DIR --format merged|adapter``

- ``merged``: LoRA folded into the weights (``W0 + lora_alpha / r * B A``), saved as a plain Hugging
  Face folder (``config.json`` with the K classes' ``id2label``/``label2id``, ``model.safetensors``,
  tokenizer files) that ``AutoModelForSequenceClassification`` and ``pipeline("text-classification")``
  load as is (the pipeline answers with the class names). The tokenizer's ``model_max_length`` is the
  run's ``data.max_length``, so ``pipeline(..., truncation=True)`` cuts long texts where the run did
  (a pipeline never truncates unless asked; a text longer than the model's positions then fails).
- ``adapter``: the PEFT LoRA format (``adapter_config.json`` + ``adapter_model.safetensors``; every
  module trained in full, e.g. DistilBERT's ``pre_classifier`` and ``classifier``, listed in
  ``modules_to_save`` and its tensors under their plain names, as PEFT saves them), which
  ``peft.PeftModel.from_pretrained(base, DIR)`` loads. Written with ``json`` and ``safetensors``;
  this package never imports ``peft``. As in PEFT's own adapters, nothing in the folder says how
  many classes the head has (its ``classifier`` is ``(K, hidden)``): ``base`` must be built with
  ``num_labels=K`` (and ``id2label``, for the names); ``export`` prints that call. ``lora_lightning.json`` beside it
  holds what PEFT's config has no field for (the labels, problem type, ``max_length``, threshold, the base's
  fingerprint), for ``python -m lora_lightning serve``.

Files and folder get the usual permissions (``0o666``/``0o777`` less the umask), not private ones.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Literal

from safetensors.torch import save_file
from torch import nn
from lora_lightning.errors import OptionError, OutputExistsError
from lora_lightning.adapters import META_FILE, base_fingerprint
from lora_lightning.hub import load_tokenizer, resolve_model_path
from lora_lightning.lora import LORA_PARAMETERS, LoRALinear, merge_and_unload


def peft_adapter(model: nn.Module, hparams: dict, modules_to_save: list[str]) -> tuple[dict, dict]:
    """``(adapter_config, tensors)`` in PEFT's LoRA format for a LoRA-injected HF model.

    Keys are ``base_model.model.<name>.lora_A.weight`` ``(r, in)`` / ``.lora_B.weight`` ``(out, r)``
    (and ``.lora_magnitude_vector`` ``(out,)`` with DoRA; ``use_rslora``/``use_dora`` set in the config),
    and ``base_model.model.<name>`` for every other trainable parameter: those of the modules trained
    in full, listed in ``modules_to_save``. PEFT keeps such a module's trained copy under
    ``<module>.modules_to_save.default.`` and drops that infix when it saves (and restores it when it
    loads), so the plain parameter name is what it reads; it wraps every name listed whole (RoBERTa's
    ``classifier`` with its ``dense`` and ``out_proj``) and needs every tensor of it in the file.
    """
    tensors = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            tensors[f"base_model.model.{name}.lora_A.weight"] = module.lora_A.detach()
            tensors[f"base_model.model.{name}.lora_B.weight"] = module.lora_B.detach()
            if module.use_dora:  # PEFT saves DoRA's magnitude without a ".weight" suffix
                tensors[f"base_model.model.{name}.lora_magnitude_vector"] = module.lora_magnitude.detach()
    for name, p in model.named_parameters():
        if p.requires_grad and not name.endswith(LORA_PARAMETERS):
            tensors[f"base_model.model.{name}"] = p.detach()
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": hparams["model_name_or_path"],
        "r": hparams["r"],
        "lora_alpha": hparams["lora_alpha"],
        "lora_dropout": hparams["lora_dropout"],
        "target_modules": list(hparams["target_modules"]),
        "modules_to_save": modules_to_save,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": bool(hparams.get("use_rslora", False)),
        "use_dora": bool(hparams.get("use_dora", False)),
    }
    return config, {k: v.contiguous().cpu() for k, v in tensors.items()}


def export(
    ckpt_path: str,
    output_dir: str,
    format: Literal["merged", "adapter"] = "merged",  # noqa: A002 (the CLI option's name)
    overwrite: bool = False,
) -> Path:
    """Export a ``LoRAClassifier`` checkpoint to ``output_dir``.

    Args:
        ckpt_path: a checkpoint written by ``fit`` (adapter-sized: the base is rebuilt from its
            ``model_name_or_path``).
        output_dir: folder to write: new, empty, or (with ``overwrite``) holding an earlier export of this
            ``format`` and nothing else (``check_output_dir``).
        format: ``merged`` (plain transformers folder) or ``adapter`` (PEFT LoRA folder).
        overwrite: replace an earlier export in ``output_dir``; no other file is ever deleted.

    Returns:
        the output folder.

    Raises:
        OutputExistsError: ``output_dir`` holds an earlier export and ``overwrite`` is false, or holds anything
            else (see ``check_output_dir``).
        CheckpointError: the checkpoint is missing, unreadable or does not fit the model.
        OptionError: ``adapter`` asked of a full fine-tuning checkpoint (it has no adapter).
    """
    from lora_lightning.checkpoint import check_checkpoint
    from lora_lightning.model import LoRAClassifier  # Lightning stays out of the export helpers above

    out = Path(output_dir).expanduser()
    check_output_dir(out, format, overwrite)
    ckpt = check_checkpoint(ckpt_path)
    max_length = ckpt.get("datamodule_hyper_parameters", {}).get("max_length")
    module = LoRAClassifier.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    if format == "adapter" and module.hparams.finetune == "full":
        raise OptionError(f"--format adapter: {ckpt_path} was trained with model.finetune=full, so it has no "
                          "LoRA adapter; use --format merged (a plain transformers folder)")
    model = module.model.eval()
    base_path = resolve_model_path(module.hparams.model_name_or_path)
    tokenizer = load_tokenizer(module.hparams.model_name_or_path)
    if max_length is not None:  # the run's cut: `truncation=True` then cuts where the run did
        tokenizer.model_max_length = int(max_length)
    # Write next to the target, then swap it in: a failed export leaves the old folder intact.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if format == "merged":
            merge_and_unload(model).save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        elif format == "adapter":
            config, tensors = peft_adapter(model, dict(module.hparams), module.modules_to_save)
            (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
            save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
            meta = {"num_labels": module.hparams.num_labels, "id2label": {str(k): v for k, v in module.model.config.id2label.items()},
                    "problem_type": module.task.problem_type, "threshold": module.task.threshold, "max_length": max_length,
                    "base_fingerprint": ckpt.get("base_fingerprint") or base_fingerprint(module.model)}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")  # what PEFT's config has no field for
            tokenizer.save_pretrained(tmp)
        else:
            raise OptionError(f"--format must be 'merged' or 'adapter', got {format!r}")
        mask = _umask()  # mkdtemp makes the folder private and safetensors writes 0600: the export is a normal folder
        for path in tmp.rglob("*"):
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
        tmp.chmod(0o777 & ~mask)
        old = None
        if out.exists():  # checked above: empty, or an earlier export's files only; set aside, then removed
            check_output_dir(out, format, overwrite)
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(old / out.name)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(f"Wrote the {format} export of {ckpt_path} to {out}/")
    cut = f"  # cuts at {max_length} tokens, as the run did" if max_length is not None else ""
    if format == "adapter":
        base = base_model_call(base_path, module.model.config.id2label, module.task.config_kwargs())
        print(f"Load it with peft.PeftModel.from_pretrained({base}, {str(out)!r})")
    else:
        print(f'Load it with pipeline("text-classification", model={str(out)!r}, truncation=True){cut}')
    return out


# The files an export writes (``save_pretrained`` of a model and its tokenizer; an adapter's two files): what an
# earlier export of a kind may hold, the only files ``--overwrite`` may replace.
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
                   "chat_template.jinja"}
EXPORT_FILES = {
    "merged": {"config.json", "model.safetensors", "model.safetensors.index.json", "generation_config.json"} | TOKENIZER_FILES,
    "adapter": {"adapter_config.json", "adapter_model.safetensors", "lora_lightning.json"} | TOKENIZER_FILES,
}
MARKERS = {"merged": ("config.json", "model.safetensors"), "adapter": ("adapter_config.json", "adapter_model.safetensors")}


def check_output_dir(out: Path, format: str, overwrite: bool) -> None:  # noqa: A002
    """Refuse an ``output_dir`` the export could not write without harm (C38): no command deletes a checkpoint
    or a file it did not write.

    A missing or empty folder is written; a folder holding an earlier export of this ``format`` (its marker files,
    and nothing but the files such an export writes, ``EXPORT_FILES``) is replaced with ``overwrite`` only;
    anything else (a run folder with its ``last.ckpt``, a folder with the user's notes, another format's export,
    a file) is refused, with ``overwrite`` too.

    Raises:
        OutputExistsError: one line naming the folder and what in it is not an export's.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputExistsError(f"output_dir {out} is a file, not a folder: pick another --output_dir")
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    if not names:
        return
    foreign = [n for n in names if n not in EXPORT_FILES.get(format, set())]
    kind = {"merged": "a merged", "adapter": "an adapter"}.get(format, f"a {format}")
    earlier = all((out / m).is_file() for m in MARKERS.get(format, ()))
    if foreign or not earlier:
        shown = ", ".join(repr(n) for n in (foreign or names)[:4]) + (" ..." if len(foreign or names) > 4 else "")
        what = f"files {kind} export does not write ({shown})" if foreign else f"no earlier {format} export ({shown})"
        raise OutputExistsError(f"output_dir {out} holds {what}: nothing in it is replaced; pick a new or empty "
                                f"--output_dir (--overwrite true replaces only an earlier {format} export)")
    if not overwrite:
        raise OutputExistsError(f"output_dir {out} holds an earlier {format} export: pass --overwrite true to replace it")


def base_model_call(base: str, id2label: dict[int, str], config_kwargs: dict | None = None) -> str:
    """The transformers call that builds the base an adapter export loads into, from ``base`` (where this run
    loaded it: a local folder, or the packaged model's, so the line works offline where the run did), with
    the K outputs named and, beyond one label per text, the problem type (a pipeline then applies a sigmoid
    per label, or nothing to a regression's values)."""
    kind = "".join(f", {k}={v!r}" for k, v in (config_kwargs or {}).items())
    return (f"AutoModelForSequenceClassification.from_pretrained({base!r}, "
            f"num_labels={len(id2label)}, id2label={dict(id2label)!r}{kind})")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def export_main(args: list[str] | None = None) -> Path:
    """``python -m lora_lightning export ...``: ``export``'s arguments as options (jsonargparse)."""
    from jsonargparse import CLI, ArgumentParser

    from lora_lightning.errors import OneLineErrors

    class ExportParser(OneLineErrors, ArgumentParser):
        pass

    given = args if args is not None else sys.argv[1:]
    if any(a == "--config" or a.startswith("--config=") for a in given):
        raise OptionError("export takes no --config: the checkpoint holds the model, its options and its classes; "
                          "pass --ckpt_path <best> --output_dir DIR (and --format merged|adapter)")

    return CLI(export, args=args, as_positional=False, prog="python -m lora_lightning export", parser_class=ExportParser)
