"""The pretrained model under the LoRA: loaded as a K-label sequence classifier, what in it is new
(and so trains in full), and where LoRA may not go. transformers and ``lora.py``'s matching rule;
of Lightning only its rank-zero log line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification
from transformers.utils import logging as hf_logging

from lora_lightning.errors import OptionError, option, prefix
from lora_lightning.hub import check_model_files, hub_error, resolve_model_path, weights_error
from lora_lightning.labels import resolve_id2label
from lora_lightning.tasks import get_task
from lora_lightning.lora import inject_lora, mark_only_lora_as_trainable, matches_target

HALF_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


# The task-head names PEFT's SEQ_CLS always trains and saves in full: we train them in full too.
HEAD_NAMES = ("classifier", "score")


# The backbone's dropout probabilities, by their config names (BERT/RoBERTa; DistilBERT).
DROPOUT_CONFIG_NAMES = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout",
                        "dropout", "attention_dropout", "seq_classif_dropout")


def load_backbone(model_name_or_path: str, torch_dtype: str | None = None, dropout: float | None = None,
                  num_labels: int = 2, id2label: dict[int, str] | None = None,
                  problem_type: str = "single_label_classification") -> tuple[nn.Module, list[str]]:
    """``AutoModelForSequenceClassification`` with ``num_labels`` labels named by ``id2label``, and what in it is new.

    ``torch_dtype`` (``"bfloat16"``/``"float16"``/``None`` for float32) is the dtype of the loaded
    weights; LoRA and the other trained tensors are float32 regardless. ``dropout`` (a probability)
    replaces every dropout probability of the model's config (hidden, attention, classifier:
    ``DROPOUT_CONFIG_NAMES``); ``None`` keeps the config's (0.1 for BERT). ``num_labels`` (K) is the
    head's width, its logits ``(B, K)``; ``id2label`` (see ``labels.resolve_id2label``; ``None``:
    SST-2's ``negative``/``positive`` for K = 2, else ``LABEL_<i>``) goes to the config with the
    ``label2id`` derived from it, so a saved or exported folder names the classes; so does ``problem_type``
    (transformers' ``config.problem_type``: a ``pipeline`` then applies a softmax, a sigmoid per label, or none).

    Every tensor that ``model_name_or_path`` does not hold is newly initialised (randomly, from the
    global seed): the head of a bare encoder (BERT's ``classifier``, DistilBERT's ``pre_classifier``
    and ``classifier``, RoBERTa's whole ``classifier`` module), and a head of another width than K
    that the folder holds (e.g. an NLI model's 3-label head under K = 2), which is replaced by a new
    K-label one, said in one log line; a head of width K is loaded as the folder holds it.
    transformers' load report (it reads like a failure, and comes again on every checkpoint load) is
    silenced around the call. Remote code is never run.

    Returns:
        ``(model, new_modules)``: the model, and the qualified names of the outermost modules that
        hold its newly initialised tensors, in module order (``["pre_classifier", "classifier"]``
        for a DistilBERT encoder).

    Raises:
        OptionError: ``num_labels < 2`` or a bad ``id2label`` (see ``labels.resolve_id2label``).
        ModelNotFoundError: the model cannot be found locally, in a package, or on the Hub (one line
            that says how to point at a local folder).
        ModelFileError: a local folder without ``config.json`` or weights, or with a truncated or corrupt
            weights file (C32), named in one line.
    """
    task = get_task(problem_type)
    id2label = resolve_id2label(num_labels, id2label, task.min_labels, task.sst2_names)
    path = resolve_model_path(model_name_or_path)
    if os.path.isdir(path):
        check_model_files(model_name_or_path, Path(path))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        overrides = {}
        if dropout is not None:
            config = AutoConfig.from_pretrained(path, trust_remote_code=False)
            overrides = {name: dropout for name in DROPOUT_CONFIG_NAMES if hasattr(config, name)}
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, id2label=id2label, label2id={v: k for k, v in id2label.items()},
            problem_type=problem_type,
            trust_remote_code=False, dtype=HALF_DTYPES.get(torch_dtype, torch.float32),
            ignore_mismatched_sizes=True, output_loading_info=True, **overrides,
        )
    except OSError as error:
        raise hub_error(model_name_or_path, error) from None
    except Exception as error:  # a damaged weights file: safetensors' own error type, torch's unpickling errors
        raised = weights_error(model_name_or_path, path, error)
        if raised is error:
            raise
        raise raised from None
    finally:
        hf_logging.set_verbosity(verbosity)
    order = list(model.state_dict())
    mismatched = sorted(info["mismatched_keys"], key=lambda m: order.index(m[0]))
    if mismatched:
        old = ", ".join(f"{key} {tuple(saved)}" for key, saved, _ in mismatched)
        new = ", ".join(f"{key} {tuple(shape)}" for key, _, shape in mismatched)
        rank_zero_info(f"{model_name_or_path} holds a head of another width: the old head ({old}) was replaced "
                       f"by a new {num_labels}-label one ({new})")
    return model, new_modules(model, set(info["missing_keys"]) | {key for key, _, _ in mismatched})


def new_modules(model: nn.Module, keys: Iterable[str]) -> list[str]:
    """The outermost modules that hold the parameters named in ``keys``, in module order.

    A module is named whole when every parameter under it is in ``keys`` (RoBERTa's ``classifier``,
    not its ``dense`` and ``out_proj``); a module that holds one of them beside loaded ones is named
    itself. Keys that are not parameters (buffers) are left out.
    """
    keys = set(keys) & {name for name, _ in model.named_parameters()}
    chosen: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(c + ".") for c in chosen):
            continue
        under = {f"{name}.{n}" for n, _ in module.named_parameters()}
        own = {f"{name}.{n}" for n, _ in module.named_parameters(recurse=False)}
        if under & keys and (under <= keys or own & keys):
            chosen.append(name)
    return chosen


def _inputs_to_weight_dtype(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: floating-point inputs in the dtype of ``module``'s first parameter, so a float32 head
    takes a bfloat16 / float16 base's hidden states outside autocast too (inside it, autocast casts anyway)."""
    weight = next(module.parameters(), None)
    if weight is None:
        return args
    return tuple(a.to(weight.dtype) if torch.is_tensor(a) and a.is_floating_point() and a.dtype != weight.dtype else a
                 for a in args)


def prepare_training(model: nn.Module, new: list[str], model_name_or_path: str, finetune: str, target_modules: list[str],
                     r: int, lora_alpha: float, lora_dropout: float, use_rslora: bool, use_dora: bool,
                     train_pooler: bool) -> tuple[list[str], list[str]]:
    """Decide what trains and set it up, in place: LoRA injected (``finetune="lora"``) or every weight (``"full"``),
    the modules trained in full (``modules_to_save``), float32 master weights for what trains (C11), and a
    half-precision base's hidden states cast for the float32 head (C25).

    Trained in full (C15): every new tensor (``new``, ``load_backbone``'s), the task head (``HEAD_NAMES``, as PEFT's
    ``SEQ_CLS`` does) and, with ``train_pooler``, the pooler; the outermost modules only; one log line names them.

    Returns:
        ``(modules_to_save, lora_modules)``: the qualified names of the modules trained in full, and of the layers
        that got LoRA (none for ``full``).

    Raises:
        OptionError: ``train_pooler`` for a model without a pooler; bad LoRA options or targets (``inject_lora``);
            a target inside a module trained in full (``check_lora_outside``).
    """
    names = [name for name, _ in model.named_modules()]
    poolers = [n for n in names if n.rsplit(".", 1)[-1] == "pooler"]
    if train_pooler and not poolers:
        raise OptionError(f"{option('model', 'train_pooler')}=true, but {type(model).__name__} has no pooler "
                          "(its head does not use one): leave it false")
    full = set(new) | {n for n in names if n.rsplit(".", 1)[-1] in HEAD_NAMES} | set(poolers if train_pooler else [])
    modules_to_save = [n for n in names if n in full and not any(n.startswith(m + ".") for m in full)]
    fresh = [m for m in modules_to_save if m in new]
    kept = [m for m in modules_to_save if m not in new]
    said = [f"new head modules trained in full: {', '.join(fresh)}"] if fresh else []
    said += [f"trained in full from {model_name_or_path}: {', '.join(kept)}"] if kept else []
    if said:
        rank_zero_info("; ".join(said))
    if finetune == "full":
        lora_modules: list[str] = []
        model.requires_grad_(True)
        trainable = [name for name, _ in model.named_parameters()]
    else:
        try:
            lora_modules = inject_lora(model, target_modules, r, lora_alpha, lora_dropout, use_rslora=use_rslora,
                                       use_dora=use_dora)
        except ValueError as error:
            raise OptionError(f"{prefix('model')}{error}") from None
        check_lora_outside(lora_modules, modules_to_save, target_modules)
        trainable = mark_only_lora_as_trainable(model, modules_to_save)
    for name in trainable:
        param = model.get_parameter(name)
        param.data = param.data.float()  # fp32 master weights for what trains (C11)
    for name in modules_to_save:  # their float32 weights take a half-precision base's output (C25)
        model.get_submodule(name).register_forward_pre_hook(_inputs_to_weight_dtype)
    return modules_to_save, lora_modules


def check_lora_outside(lora_modules: list[str], full_modules: list[str], target_modules: list[str]) -> None:
    """Refuse LoRA on a layer inside (or equal to) a module that trains in full.

    PEFT never adapts a layer inside its ``modules_to_save`` (it skips it), and the merged export
    would fold the update into a weight that trains anyway: the adapter and the merged export could
    not both give our logits, and the LoRA there would add nothing.

    Args:
        lora_modules: qualified names of the layers that got LoRA (``inject_lora``'s result).
        full_modules: qualified names of the modules trained in full.
        target_modules: ``model.target_modules``, to name the one that reached inside.

    Raises:
        OptionError: one line naming ``model.target_modules``, the target, the layer and the module,
            with narrower targets (longer name suffixes) that leave the module out.
    """
    def owner(name: str) -> str | None:
        return next((m for m in full_modules if name == m or name.startswith(m + ".")), None)

    def target_of(name: str) -> str:
        return next(t for t in target_modules if matches_target(name, [t]))

    blocked = [name for name in lora_modules if owner(name)]
    if not blocked:
        return
    narrower: list[str] = []
    for name in lora_modules:
        if owner(name):
            continue
        parts = name.split(".")
        for k in range(len(target_of(name).split(".")), len(parts) + 1):  # never wider than its target
            suffix = ".".join(parts[-k:])
            if not any(matches_target(b, [suffix]) for b in blocked):
                break
        if suffix not in narrower:
            narrower.append(suffix)
    layer = blocked[0]
    where = f"{layer!r}, inside {owner(layer)!r}," if layer != owner(layer) else f"{layer!r},"
    hint = f"name the layers outside it, e.g. {narrower}" if narrower else f"drop {target_of(layer)!r}"
    raise OptionError(
        f"model.target_modules={list(target_modules)}: {target_of(layer)!r} matches {where} which trains in full; "
        f"LoRA inside a module trained in full is refused (PEFT skips such layers, so its adapter and the "
        f"merged export would differ): {hint}"
    )


# Model types whose sequence-classification head reads the last hidden state of the first token only
# ([CLS] / <s>: BERT's pooler, RoBERTa's classification head), with BERT's layer layout.
FIRST_TOKEN_HEADS = ("bert", "roberta")


class FirstTokenOnly:
    """A context manager that, while entered, runs the last encoder layer past its self-attention for the first
    token only (see ``last_layer_first_token_only``); outside it the model runs as transformers wrote it.

    Entered by ``LoRAClassifier.forward``, which returns only the logits; a call to the backbone itself
    (``clf.model(ids, output_hidden_states=True)``, ``clf.model.bert(ids)``) gets every position's hidden state.
    ``enabled`` is ``False`` for a model whose head reads more than the first token (then it does nothing). It is
    not active either while ``model`` trains with gradient checkpointing (``gradient_checkpointing_enable()``):
    the backward pass then runs each layer's forward again, outside this context, and must see what the first
    forward saw (the whole sequence), or its gradients would not be the model's.
    """

    def __init__(self, enabled: bool, model: nn.Module | None = None) -> None:
        self.enabled, self.active, self.model = enabled, False, model

    def __enter__(self) -> "FirstTokenOnly":
        checkpointing = self.model is not None and self.model.training and checkpointing_on(self.model)
        self._was, self.active = self.active, self.enabled and not checkpointing
        return self

    def __exit__(self, *exc) -> None:
        self.active = self._was

    def __bool__(self) -> bool:
        return self.enabled

    def hook(self, module: nn.Module, args: tuple) -> tuple | None:
        """``(attention_output, input_tensor)``, both ``(B, T, hidden)`` -> both ``(B, 1, hidden)`` while active."""
        if not self.active:
            return None
        attention_output, input_tensor = args
        return attention_output[:, :1], input_tensor[:, :1]


def checkpointing_on(model: nn.Module) -> bool:
    """Whether transformers' activation (gradient) checkpointing is on for ``model``, by either of its names."""
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, name, False))


def last_layer_first_token_only(model: nn.Module) -> FirstTokenOnly:
    """Let the last encoder layer run past its self-attention for the first token only, when the head
    reads nothing else (``FIRST_TOKEN_HEADS``), inside the returned ``FirstTokenOnly`` context.

    The head's input, the last layer's output at position 0, needs that layer's attention for the
    first token's query only, but its keys and values at every position; the attention output's
    dense + LayerNorm and the FFN then run on ``(B, 1, hidden)`` instead of ``(B, T, hidden)``.
    Exact (same logits and gradients, to float rounding; tested): it leaves out 9 of the 12
    ``hidden^2``-sized multiply-adds per token of the last layer (for MiniLM-L6, ~11% of a
    training step's GEMM work). A forward pre-hook on the last layer's ``attention.output`` cuts its
    two inputs to position 0 while the context is entered, so the model's modules, state dict, saving and
    exports are unchanged, and outside the context (a caller taking hidden states) so is every output.

    Returns:
        the context (falsy, and doing nothing, for a model type outside ``FIRST_TOKEN_HEADS``).
    """
    if model.config.model_type not in FIRST_TOKEN_HEADS:
        return FirstTokenOnly(False)
    context = FirstTokenOnly(True, model)
    last = getattr(model, model.base_model_prefix).encoder.layer[-1]
    last.attention.output.register_forward_pre_hook(context.hook)
    return context
