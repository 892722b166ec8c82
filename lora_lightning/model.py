"""``LoRAClassifier``: a LoRA-patched ``BertForSequenceClassification`` (K classes) as a ``LightningModule``."""

from __future__ import annotations

import inspect
import math
import os
from contextlib import contextmanager
from typing import Literal

import torch
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.wrappers import ClasswiseWrapper

from lora_lightning.checkpoint import (check_options, check_overrides, fill_frozen, keep_trainable, read_hyperparameters,
                                      resume_said)
from lora_lightning.dropout import use_fast_dropout
from lora_lightning.errors import (CheckpointError, LoRALightningError, LoRALightningWarning, OptionError,
                                   TrainingDivergedError, option)
from lora_lightning.adapters import base_fingerprint
from lora_lightning.backbone import last_layer_first_token_only, load_backbone, prepare_training
from lora_lightning.labels import resolve_id2label
from lora_lightning.lora import count_parameters, merge_lora, unmerge_lora
from lora_lightning.metrics import hparams_for_board, register_hparams_metric
from lora_lightning.optim import adamw, linear_factor, resumed_schedule, set_rates
from lora_lightning.tasks import ProblemType, get_task
from lora_lightning.values import as_bool, as_float, as_id2label, as_int, as_str, as_str_list


def describe(hp, lora_modules: list[str]) -> str:
    """What trains, for the log: ``LoRA r=4 (DoRA) on 12 Linears in 6 layers (query, value)`` or ``full fine-tuning``."""
    if hp.finetune == "full":
        return "full fine-tuning"
    variants = [name for name, on in (("rsLoRA", hp.use_rslora), ("DoRA", hp.use_dora)) if on]
    if hp.loraplus_lr_ratio is not None:
        variants.append(f"LoRA+ x{hp.loraplus_lr_ratio:g}")
    layers = len({n.split(".layer.")[1].split(".")[0] for n in lora_modules if ".layer." in n})
    within = f" in {layers} layers" if layers else ""
    return (f"LoRA r={hp.r}{' (' + ', '.join(variants) + ')' if variants else ''} on {len(lora_modules)} "
            f"Linears{within} ({', '.join(hp.target_modules)})")


def check_ranges(learning_rate: float, warmup_ratio: float, loraplus_lr_ratio: float | None, backbone_dropout: float | None,
                 threshold: float, finetune: str, use_rslora: bool, use_dora: bool) -> None:
    """Refuse ``LoRAClassifier`` options out of range, or LoRA variants with full fine-tuning, one line each.

    Raises:
        OptionError: naming the option, its range and the value.
    """
    if not learning_rate > 0:
        raise OptionError(f"{option('model', 'learning_rate')} must be > 0, got {learning_rate}")
    if not 0 <= warmup_ratio < 1:
        raise OptionError(f"{option('model', 'warmup_ratio')} must be in [0, 1), got {warmup_ratio}")
    if loraplus_lr_ratio is not None and not loraplus_lr_ratio > 0:
        raise OptionError(f"{option('model', 'loraplus_lr_ratio')} must be > 0 (or null), got {loraplus_lr_ratio}")
    if backbone_dropout is not None and not 0 <= backbone_dropout < 1:
        raise OptionError(f"{option('model', 'backbone_dropout')} must be in [0, 1) (or null), got {backbone_dropout}")
    variants = [option("model", name) for name, on in (("use_rslora", use_rslora), ("use_dora", use_dora),
                                                       ("loraplus_lr_ratio", loraplus_lr_ratio is not None)) if on]
    if finetune == "full" and variants:
        raise OptionError(f"{', '.join(variants)} need {option('model', 'finetune')}=lora: full fine-tuning has no LoRA")
    if not 0 < threshold < 1:
        raise OptionError(f"{option('model', 'threshold')} must be in (0, 1), got {threshold}")


class LoRAClassifier(pl.LightningModule):
    """A text classifier (or regressor) with ``num_labels`` (K) outputs: a frozen pretrained encoder with LoRA
    (Hu et al. 2021, arXiv:2106.09685) in its attention, plus a trained head.

    Batches are dicts from the data modules: ``input_ids``/``attention_mask``/``token_type_ids`` of shape
    ``(B, T)`` and ``labels`` (class indices ``(B,)``; multi-label and regression: ``(B, K)`` floats); logits are
    ``(B, K)``. ``token_type_ids`` are dropped for a model that takes none (DistilBERT). The problem type
    (``tasks``) decides the loss, the metrics logged per validation / test (``val_`` / ``test_``, with ``loss``:
    ``acc`` and ``f1`` for K = 2 classes, ``macro_f1`` and ``f1_<name>`` for more; multi-label's F1s and
    ``subset_acc``; regression's ``pearson``, ``spearman``, ``mse``, ``mae``) and the figure a
    ``TensorBoardLogger`` gets after every validation (not the sanity check) and test (``val_confusion_matrix``;
    regression: ``val_scatter``).

    Trained in full (``modules_to_save``, the adapter export's too): every module that
    ``model_name_or_path`` does not hold (the new head: BERT's ``classifier``, DistilBERT's
    ``pre_classifier`` and ``classifier``, RoBERTa's ``classifier`` module), the task head
    (``classifier``/``score``) even when the folder holds a 2-label one, and the pooler with
    ``train_pooler``; one log line names them. A folder whose head has another width than K (an NLI
    model's 3 labels, K = 2) gets a new K-label head; a head of width K is kept (and trained on).

    Args:
        model_name_or_path: Hub id or local folder of a BERT-like encoder.
        r: LoRA rank.
        lora_alpha: LoRA scaling numerator; the update is scaled by ``lora_alpha / r``.
        lora_dropout: dropout probability on the LoRA branch input.
        target_modules: names or suffixes of the ``nn.Linear`` layers that get LoRA.
        train_pooler: also train BERT's pooler in full (frozen by default; refused for a model
            whose head uses no pooler, such as DistilBERT or RoBERTa).
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay (decoupled).
        warmup_ratio: share of the optimizer steps spent warming up linearly from 0,
            then decaying linearly to 0.
        torch_dtype: dtype of the frozen base weights; ``bfloat16``/``float16`` halve their memory
            and need ``trainer.precision`` ``bf16-mixed``/``16-mixed`` (``float16`` needs a GPU).
            The trained tensors (LoRA, head) stay float32.
        finetune: ``"lora"`` (the default) trains LoRA and the head; ``"full"`` trains every weight
            of the model with no LoRA injected (the ceiling that LoRA is compared against; use a
            full fine-tuning learning rate such as ``5e-5``, and expect full-size checkpoints).
            The LoRA options are then unused.
        compile: run the backbone's forward (and its backward) through ``torch.compile(dynamic=True)``
            (module and checkpoint keys unchanged); compiling costs time up front, see BENCHMARKS.md.
            The loss and gradients equal the eager ones within float rounding (tested on CPU); with
            dropout the masks come from the compiler's generator (the same distribution, other masks).
        compile_mode: ``torch.compile``'s mode with ``compile``: ``default``, or ``reduce-overhead``,
            which on CUDA replays the step as CUDA graphs (one per batch shape: on CUDA the batches
            are padded to a multiple of 8 tokens, so there are few) instead of launching each kernel
            from Python: the GPU fast path (``--model.compile true --model.compile_mode reduce-overhead``;
            BENCHMARKS.md, "GPU"). On CPU the modes compile the same code.
        float32_matmul_precision: ``torch.set_float32_matmul_precision`` on CUDA (``high``: TensorFloat-32
            matmuls on Tensor Cores, the transformers / Lightning recommendation for fine-tuning;
            ``highest``: full float32). Set in ``setup`` when the model is on a CUDA device, said in one
            line; on CPU nothing changes.
        merge_for_inference: fold LoRA into the base weights for ``test``/``predict``/``validate``
            runs (outside ``fit``), so inference costs what the base model costs; unmerged after.
        use_rslora: rsLoRA's ``scaling = lora_alpha / sqrt(r)`` (Kalajdzievski 2023, arXiv:2312.03732).
        use_dora: DoRA, weight-decomposed LoRA (Liu et al. 2024, arXiv:2402.09353): a trained
            magnitude per output row of every adapted Linear (``lora_magnitude``).
        loraplus_lr_ratio: LoRA+ (Hayou et al. 2024, arXiv:2402.12354): ``lora_B`` trains at this
            multiple of ``learning_rate`` (the paper suggests 16); ``null``: one learning rate.
        backbone_dropout: every dropout probability of the backbone's config (hidden, attention,
            classifier); ``null`` keeps the config's (0.1 for BERT). LoRA's own is ``lora_dropout``.
        gradient_checkpointing: transformers' activation checkpointing: each encoder layer's activations are
            recomputed in the backward pass instead of kept (less memory for long ``max_length`` or big batches,
            about a third more compute). The gradients are the same as without it (tested); the last layer then
            runs for every token (``backbone.FirstTokenOnly``).
        num_labels: number of outputs K (the head's width): classes (at least 2), labels or targets; set from
            the data by the CLI.
        id2label: class index -> name, keys exactly ``0..K-1`` (``"0"`` string keys are read as
            ints), names distinct; it names the metrics, the exports' labels and the predictions.
            ``null``: SST-2's ``negative``/``positive`` when K = 2, else ``LABEL_<i>``. Set from the
            data by the CLI.
        problem_type: ``single_label_classification``, ``multi_label_classification`` or ``regression``
            (transformers' ``config.problem_type``, written into the exports); linked from ``data.problem_type``.
        class_weights: ``balanced`` (from the train rows' labels: scikit-learn's for classes, negatives /
            positives per label for multi-label) or K numbers; ``null``: unweighted. Said in the log, saved in
            the checkpoint, kept by a resumed run.
        threshold: multi-label's decision threshold on each label's probability, in (0, 1); a run option.

    Checkpoints hold only the trainable tensors (LoRA ``A``/``B``, the head, anything else set
    trainable), with the optimizer state and the hyperparameters; the frozen base is rebuilt from
    ``model_name_or_path`` on load, and a checkpoint that does not fit is refused by name.

    Raises:
        OptionError: bad LoRA options or targets (see ``inject_lora``), a target inside a module
            trained in full (see ``check_lora_outside``), ``train_pooler`` for a model without a
            pooler, ``warmup_ratio`` outside [0, 1), ``learning_rate <= 0``, ``loraplus_lr_ratio <= 0``,
            ``backbone_dropout`` outside [0, 1), a LoRA variant with ``finetune=full``, ``finetune`` not
            ``lora``/``full``, ``num_labels < 2``, an ``id2label`` whose keys are not exactly ``0..K-1``
            or whose names repeat (see ``labels.resolve_id2label``).
        ModelNotFoundError: the model cannot be loaded (see ``load_backbone``).
    """

    def __init__(
        self,
        model_name_or_path: str = "sentence-transformers/all-MiniLM-L6-v2",
        r: int = 4,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.1,
        target_modules: list[str] = ["query", "value"],  # noqa: B006 (LightningCLI shows the default)
        train_pooler: bool = False,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.06,
        merge_for_inference: bool = False,
        torch_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        compile: bool = False,  # noqa: A002 (the option's name, as in torch.compile)
        compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default",
        float32_matmul_precision: Literal["highest", "high", "medium"] = "high",
        finetune: Literal["lora", "full"] = "lora",
        use_rslora: bool = False,
        use_dora: bool = False,
        loraplus_lr_ratio: float | None = None,
        backbone_dropout: float | None = None,
        gradient_checkpointing: bool = False,
        num_labels: int = 2,
        id2label: dict[int, str] | None = None,
        problem_type: ProblemType = "single_label_classification",
        class_weights: Literal["balanced"] | list[float] | None = None,
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        # plain values (a Path, numpy numbers, a str for a list): save_hyperparameters stores these locals, and the
        # checkpoint must load under weights_only (C22)
        model_name_or_path = as_str("model", "model_name_or_path", model_name_or_path)
        r, num_labels = as_int("model", "r", r), as_int("model", "num_labels", num_labels)
        threshold, problem_type = as_float("model", "threshold", threshold), as_str("model", "problem_type", problem_type)
        if class_weights is not None and not isinstance(class_weights, str):
            class_weights = [as_float("model", "class_weights", w) for w in class_weights]
        task = get_task(problem_type)
        lora_alpha, lora_dropout, learning_rate, weight_decay, warmup_ratio, loraplus_lr_ratio, backbone_dropout = (
            as_float("model", n, v) for n, v in (
                ("lora_alpha", lora_alpha), ("lora_dropout", lora_dropout), ("learning_rate", learning_rate),
                ("weight_decay", weight_decay), ("warmup_ratio", warmup_ratio), ("loraplus_lr_ratio", loraplus_lr_ratio),
                ("backbone_dropout", backbone_dropout)))
        train_pooler, merge_for_inference, compile, use_rslora, use_dora, gradient_checkpointing = (
            as_bool("model", n, v) for n, v in (
                ("train_pooler", train_pooler), ("merge_for_inference", merge_for_inference), ("compile", compile),
                ("use_rslora", use_rslora), ("use_dora", use_dora), ("gradient_checkpointing", gradient_checkpointing)))
        target_modules = as_str_list("model", "target_modules", target_modules)
        id2label = as_id2label("model", "id2label", id2label)
        check_ranges(learning_rate, warmup_ratio, loraplus_lr_ratio, backbone_dropout, threshold, finetune, use_rslora, use_dora)
        # saved so, by save_hyperparameters: int keys, names filled in
        id2label = resolve_id2label(num_labels, id2label, task.min_labels, task.sst2_names)
        self.label_names = list(id2label.values())  # by output index
        self.save_hyperparameters()
        self.model, new = load_backbone(model_name_or_path, torch_dtype, backbone_dropout, num_labels, id2label, problem_type)
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes as found
        if gradient_checkpointing:  # transformers' switch; the [CLS]-only last layer steps aside while it is on
            if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        use_fast_dropout(self.model)  # the same distribution, half the cost of its masks on CPU (dropout.py)
        self.first_token_only = last_layer_first_token_only(self.model)  # exact; in forward() only (backbone.py)
        if finetune not in ("lora", "full"):
            raise OptionError(f"{option('model', 'finetune')} must be 'lora' or 'full', got {finetune!r}")
        self.modules_to_save, self.lora_modules = prepare_training(
            self.model, new, model_name_or_path, finetune, list(target_modules), r, lora_alpha, lora_dropout, use_rslora,
            use_dora, train_pooler)
        # Checkpoints hold the trainable tensors only; on_load_checkpoint checks them, then fills in the frozen base.
        signature = inspect.signature(self.model.forward).parameters.values()
        self.forward_inputs = {p.name for p in signature if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        self._build_task(task.resolve_class_weights(class_weights if class_weights != "balanced" else None, None,
                                                    self.label_names))
        # mean loss over samples, synchronised across processes like the other metrics
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self._schedule: tuple[int, int] | None = None  # (warm-up, total) optimizer steps, set in on_train_start
        self._finite: torch.Tensor | None = None  # on CUDA: every loss since the last check was finite
        self._eval_finite: torch.Tensor | None = None  # every loss of this validation / test so far was finite
        self.eval_finite = True  # the last validation's losses and logits were finite (ModelCheckpoint asks)
        self.dropout_seed: int | None = None  # set at fit start (or from the checkpoint); see dropout_rng
        self._loaded_step: int | None = None  # the global step of the checkpoint loaded, if any
        self._saved_schedule: tuple[int, int] | None = None  # (warm-up, total) steps of the loaded checkpoint's run

    def _build_task(self, class_weight: torch.Tensor | None) -> None:
        """The problem type's loss, metrics and figures for the model's outputs (``tasks``)."""
        self.task = get_task(self.hparams.get("problem_type", "single_label_classification"))(
            self.label_names, self.hparams.get("threshold", 0.5), class_weight)
        self.loss_fn = self.task.loss
        metrics = self.task.metrics()
        self.val_metrics, self.test_metrics = metrics.clone(prefix="val_"), metrics.clone(prefix="test_")
        self.val_figure, self.test_figure = self.task.figure_state(), self.task.figure_state()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids ``(B, T)`` -> logits ``(B, K)``, K = ``num_labels``.

        Only the inputs given (not ``None``) and named in the model's ``forward`` reach it: DistilBERT
        takes no ``token_type_ids``, which BERT tokenizers yield.
        """
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        with self.first_token_only:  # only the logits are returned: the last layer may skip all but [CLS]
            return self.model(**{k: v for k, v in inputs.items() if v is not None and k in self.forward_inputs}).logits

    def _shared_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(loss, logits (B, K), labels)``: the problem type's loss (``tasks``) and targets."""
        labels = batch["labels"]
        logits = self(**{k: v for k, v in batch.items() if k not in ("labels", "row_weight")})
        if "row_weight" in batch:  # evaluation under several processes: a weight-0 row only fills a process (C37)
            keep = batch["row_weight"] > 0
            logits, labels = logits[keep], labels[keep]
        return self.loss_fn(logits, labels), logits, labels

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy on one batch.

        Raises:
            TrainingDivergedError: the loss is NaN or infinite (checkpoints written so far are kept).
        """
        with self.dropout_rng(batch_idx):
            loss, _, labels = self._shared_step(batch)
        if loss.device.type == "cpu":
            if not torch.isfinite(loss):
                self._check_finite(torch.tensor(False), self.global_step, value=loss.item())
        else:  # no host sync per step: a flag on the device, read every log_every_n_steps steps and at epoch end
            finite = torch.isfinite(loss.detach())
            self._finite = finite if self._finite is None else self._finite & finite
            if (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0:
                self._check_finite(self._finite, self.global_step, window=self.trainer.log_every_n_steps)
        self.log("train_loss", loss, prog_bar=True, batch_size=labels.numel())
        return loss

    def _check_finite(self, finite: torch.Tensor, step: int, window: int = 1, value: float | None = None) -> None:
        """Raise ``TrainingDivergedError`` when ``finite`` (a bool tensor) is false."""
        if not bool(finite):
            where = f"at step {step}" if window == 1 else f"in steps {max(0, step - window + 1)}..{step}"
            raise TrainingDivergedError(
                f"train_loss is {value if value is not None else 'not finite'} {where}: training diverged; checkpoints "
                f"saved so far are kept; try a lower {option('model', 'learning_rate')} (now {self.hparams.learning_rate})")
        self._finite = None

    def on_train_epoch_end(self) -> None:
        if self._finite is not None:
            self._check_finite(self._finite, self.global_step - 1, window=self.trainer.log_every_n_steps)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str, metrics: MetricCollection) -> None:
        """Update the stage's loss, metrics and confusion matrix with one batch; log the scalar metrics
        as Metric objects (Lightning computes them over the epoch, synced across processes)."""
        loss, logits, labels = self._shared_step(batch)
        mean_loss = getattr(self, f"{stage}_loss")
        if labels.shape[0]:  # a process's weight-0 filler row only (C37) updates nothing, but still logs below
            finite = torch.isfinite(loss.detach())  # a NaN / inf logit makes the loss so; no host sync per step
            self._eval_finite = finite if self._eval_finite is None else self._eval_finite & finite
            self.task.update(metrics, logits.detach(), labels)
            if getattr(self, f"{stage}_figure") is not None:
                self.task.update_figure(getattr(self, f"{stage}_figure"), logits.detach(), labels)
            mean_loss.update(loss.detach(), weight=labels.numel())
        # every process logs the same Metric objects: their values are computed (and synced) over all of them
        rows = max(1, labels.shape[0])
        self.log(f"{stage}_loss", mean_loss, prog_bar=True, batch_size=rows)
        # what log_dict(metrics) logs, less the per-class F1 (a dict, which self.log cannot take): on_*_epoch_end
        scalars = {name: m for name, m in metrics.items(keep_base=False, copy_state=False) if not isinstance(m, ClasswiseWrapper)}
        self.log_dict(scalars, prog_bar=True, batch_size=rows)

    def _eval_epoch_start(self, stage: str) -> None:
        """Reset the stage's loss, metrics and confusion matrix: their states are then made under this
        loop's grad mode (inference tensors can't be updated in place otherwise), and the per-class F1
        and the confusion matrix, which are not Metric objects that Lightning resets, start empty."""
        for metric in (getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_metrics"), getattr(self, f"{stage}_figure")):
            if metric is not None:
                metric.reset()
        self._eval_finite = None

    def _eval_epoch_end(self, stage: str) -> None:
        """Log the per-class F1 (K > 2) under the keys ``MetricCollection.compute`` gives them
        (``val_f1_<name>``), and, with a ``TensorBoardLogger``, the confusion matrix as a figure
        (``<stage>_confusion_matrix``, at ``global_step``) except in the sanity check."""
        metrics = getattr(self, f"{stage}_metrics")
        fitting = self.trainer.state.fn == "fit"
        finite = bool(self._eval_finite) if self._eval_finite is not None else True
        self.eval_finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)  # every process's rows
        # Lightning logs a validation inside fit at the index of the step it follows (global_step - 1): the figures, and
        # a validate / test of a checkpoint, go to that same step, on top of the fit's own point for that checkpoint
        if fitting:
            step = max(0, self.global_step - 1)
        else:
            step = self.global_step if self._loaded_step is None else max(0, self._loaded_step - 1)
        for metric in metrics.values(copy_state=False):
            if isinstance(metric, ClasswiseWrapper):  # compute() syncs across processes; sync_dist averages equal values
                self.log_dict({f"{metrics.prefix}{k}": v for k, v in metric.compute().items()}, sync_dist=True)
        if not fitting and self._loaded_step is not None:
            # validate / test --ckpt_path: Lightning's loggers take a logged "step" as the x-axis (else 0), so the
            # point sits at the checkpoint's step; the metrics returned carry it as "step" too
            self.log("step", float(step))
        boards = [logger for logger in self.loggers if isinstance(logger, TensorBoardLogger)]
        state = getattr(self, f"{stage}_figure")
        if not boards or self.trainer.sanity_checking or state is None:
            return
        fig, tag = self.task.figure(state, stage, step)  # computed on every process: it syncs them
        if self.trainer.is_global_zero and fig is not None:
            for board in boards:
                board.experiment.add_figure(tag, fig, global_step=step)

    def on_validation_epoch_start(self) -> None:
        self._eval_epoch_start("val")

    def on_test_epoch_start(self) -> None:
        self._eval_epoch_start("test")

    def on_test_epoch_end(self) -> None:
        """Log the per-class F1 (K > 2) and the confusion-matrix figure (see ``_eval_epoch_end``)."""
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """``(B, num_labels)``, column i for ``id2label[i]``: class probabilities (softmax), each label's probability
        (multi-label: sigmoid) or the values (regression), as the problem type says (``tasks``)."""
        return self.task.outputs(self(**{k: v for k, v in batch.items() if k not in ("labels", "row_weight")}))

    @contextmanager
    def dropout_rng(self, batch_idx: int):
        """The random state of one training forward: torch's generators, forked (the global state is given back
        unchanged after) and seeded from ``(dropout_seed, optimizer step, micro-batch)``, so dropout masks depend
        only on where the batch is in the run: a resumed run matches an uninterrupted one exactly, and the
        micro-batches of one accumulated step get different masks. Code running beside training (callbacks, the
        user's own sampling) sees the global generator as it would without this package."""
        accumulate = self.trainer.accumulate_grad_batches
        position = self.global_step * accumulate + batch_idx % accumulate  # = global_step without accumulation
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        seed = self.dropout_seed if self.dropout_seed is not None else int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.manual_seed((seed * 1_000_003 + position) % 2**63)
            yield

    def on_fit_start(self) -> None:
        """Train mode (``load_from_checkpoint`` returns eval mode, as ``from_pretrained`` does); the dropout
        seed (``seed_everything``'s, else ``torch.initial_seed()``, so ``torch.manual_seed`` decides it; a resumed
        run keeps its checkpoint's); log trainable / total parameter counts and the problem type (with its class
        weights), and register ``hp/val_acc`` (``hp/val_<monitor>``) as the hyperparameter metric (TensorBoard's hparams
        tab then shows val_acc against r, lora_alpha, learning_rate)."""
        self.train()
        if self.dropout_seed is None:
            self.dropout_seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
        trainable, total = count_parameters(self.model)
        rank_zero_info(f"{describe(self.hparams, self.lora_modules)}: trainable params: {trainable:,} || all params: "
                       f"{total:,} || trainable%: {100 * trainable / total:.4f}")
        rank_zero_info(self.task.describe())
        if self.logger is not None:
            # not LightningCLI's _instantiator; nor the K class names (num_labels is there)
            params = {k: v for k, v in self.hparams.items() if k != "id2label"}
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is not None:  # the data options too, for the HPARAMS tab
                params.update({f"data.{k}": v for k, v in datamodule.hparams.items() if k != "model_name_or_path"})
            params.update(trainable_params=trainable, total_params=total)
            params = hparams_for_board(params)
            self.logger.log_hyperparams(params)
            if isinstance(self.logger, TensorBoardLogger) and self.trainer.is_global_zero:
                register_hparams_metric(self.logger, params, f"hp/val_{self.task.monitor}")

    def on_validation_epoch_end(self) -> None:
        """Copy the epoch's monitored metric (``val_acc``; ``val_macro_f1`` multi-label, ``val_pearson`` regression) to
        ``hp/val_<it>`` (the hparams tab's metric) during fit; log the per-output F1 and the figure
        (see ``_eval_epoch_end``)."""
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.log(f"hp/val_{self.task.monitor}", self.val_metrics[self.task.monitor].compute())
        self._eval_epoch_end("val")

    def setup(self, stage: str) -> None:
        """Check the data's classes against the model's, and that ``torch_dtype`` and ``trainer.precision`` can
        run on this accelerator.

        Classes: a data module that knows its classes (``num_labels``, ``id2label``) must have the model's. A
        fresh ``fit`` (no ``ckpt_path``) with the same number of classes under other names takes the data's
        names, and says so; any other difference is refused (the CLI links them, so this is for Python users).

        Raises:
            OptionError: another number of classes than the data's, or other names where a checkpoint decides
                them (one line naming ``num_labels`` / ``id2label`` and what to pass); a half-precision base
                without a matching mixed precision, or ``float16`` on CPU.
        """
        self._check_classes(stage)
        self._balance(stage)
        if self.hparams.compile and not hasattr(self.model.forward, "_torchdynamo_orig_callable"):
            self.model.forward = torch.compile(self.model.forward, dynamic=True,
                                               mode=self.hparams.get("compile_mode", "default"))
        if self.trainer.strategy.root_device.type == "cuda":
            self.set_matmul_precision()
        precision = str(self.trainer.precision)
        if precision == "16-true" and stage == "fit":
            raise OptionError("trainer.precision=16-true trains LoRA and the head in float16, where AdamW's eps (1e-8) "
                              "rounds to 0 and its second moments underflow: the first steps are NaN at any learning "
                              "rate. Use trainer.precision=bf16-mixed (or 16-mixed on a GPU): the trained tensors stay "
                              "float32, with model.torch_dtype=bfloat16 / float16 for a half-precision base")
        if precision in ("bf16-true", "16-true"):
            rank_zero_warn(f"trainer.precision={precision}: LoRA and the head train in half precision too; "
                           "bf16-mixed / 16-mixed keep them float32 (with model.torch_dtype for a half-precision base)",
                           category=LoRALightningWarning)
        dtype = self.hparams.torch_dtype
        if dtype == "float32":
            return
        precision = str(self.trainer.precision)
        if dtype == "float16" and self.device.type == "cpu":
            raise OptionError("model.torch_dtype=float16 needs a GPU; on CPU use model.torch_dtype=bfloat16 "
                             "with trainer.precision=bf16-mixed")
        wanted = {"bfloat16": "bf16-mixed", "float16": "16-mixed"}[dtype]
        if precision != wanted:
            raise OptionError(f"model.torch_dtype={dtype} needs trainer.precision={wanted}, got trainer.precision={precision}")

    def set_matmul_precision(self) -> None:
        """``torch.set_float32_matmul_precision(float32_matmul_precision)`` for a CUDA run, said in one line (the
        CLI calls it before the Trainer starts, so Lightning's Tensor Core hint does not come first)."""
        wanted = self.hparams.get("float32_matmul_precision", "high")
        if torch.get_float32_matmul_precision() != wanted:
            torch.set_float32_matmul_precision(wanted)
            rank_zero_info(f"CUDA: float32 matmuls at precision {wanted!r} ({option('model', 'float32_matmul_precision')}"
                           f"; 'high' uses TensorFloat-32 on Tensor Cores, 'highest' full float32)")

    def _check_classes(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "id2label") or stage == "predict":
            return
        problem_type = getattr(datamodule, "problem_type", "single_label_classification")
        if problem_type != self.task.problem_type:
            raise OptionError(f"the data is {option('data', 'problem_type')}={problem_type}, but the model is "
                              f"{option('model', 'problem_type')}={self.task.problem_type}: build it with "
                              f"problem_type=dm.problem_type (the command line links them)")
        try:
            names = [str(v) for v in datamodule.id2label.values()]
        except LoRALightningError:  # the data cannot say (no train file and no labels): nothing to compare
            return
        if names == self.label_names:
            return
        pass_ = (f"{option('model', 'num_labels')}={len(names)}, {option('model', 'id2label')}={dict(enumerate(names))}"
                 " (from Python: LoRAClassifier(..., num_labels=dm.num_labels, id2label=dm.id2label))")
        if len(names) != len(self.label_names):
            raise OptionError(f"the data has {len(names)} classes {names}, but the model was built for "
                              f"{len(self.label_names)} {self.label_names}: build it with {pass_}")
        if stage == "fit" and self.trainer.ckpt_path is None and self._loaded_step is None:
            id2label = dict(enumerate(names))
            rank_zero_info(f"the model's classes take the data's names {names} (it was built with {self.label_names})")
            self.label_names = names
            self.hparams["id2label"] = id2label
            self.model.config.id2label, self.model.config.label2id = id2label, {v: k for k, v in id2label.items()}
            self._build_task(self.task.class_weight)
            return
        raise OptionError(f"the data's classes are {names}, but the model's (from its checkpoint) are {self.label_names}: "
                          f"use the data the model was trained on, or pass {option('data', 'labels')}={self.label_names}")

    def _balance(self, stage: str) -> None:
        """``class_weights=balanced``: the weights from the train rows' labels (the data module's ``label_counts``),
        for a fit; a checkpoint's come with it (``on_load_checkpoint``, after this)."""
        if self.hparams.get("class_weights") != "balanced" or self.task.class_weight is not None or stage != "fit":
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        counts = datamodule.label_counts() if hasattr(datamodule, "label_counts") else None
        self.task.class_weight = self.task.resolve_class_weights("balanced", counts, self.label_names)

    def trainable_state_keys(self) -> dict[str, torch.Size]:
        """State-dict keys (and shapes) that a checkpoint holds: the trainable parameters."""
        return {name: p.shape for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only the trainable tensors: an adapter-sized checkpoint, not a copy of BERT; the run's dropout seed and
        learning-rate schedule (warm-up, total steps), for an exact, checked resume; and the base's fingerprint
        (``adapters.base_fingerprint``), so a server refuses the adapter on another base."""
        checkpoint["state_dict"] = keep_trainable(checkpoint["state_dict"], self.trainable_state_keys())
        if getattr(self, "_fingerprint", None) is None:  # the base is frozen: once per model
            self._fingerprint = base_fingerprint(self.model)
        checkpoint["base_fingerprint"] = self._fingerprint
        checkpoint["dropout_seed"] = self.dropout_seed
        if self.task.class_weight is not None:  # the weights the loss used (balanced: from that run's train rows)
            checkpoint["class_weights"] = self.task.class_weight.tolist()
        if self._schedule is not None:
            checkpoint["lr_schedule"] = list(self._schedule)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint that does not fit, naming the option or the first mismatching key;
        then fill in the frozen base (already loaded from ``model_name_or_path``).

        The structure options saved with the checkpoint (``finetune``, ``r``, ``lora_alpha``,
        ``target_modules``, ``train_pooler``, ``use_rslora``, ``use_dora``) must equal this model's: a
        different ``lora_alpha`` would silently rescale the update. So must its labels (``num_labels``,
        ``id2label``; a checkpoint from before they were options has SST-2's two): the same head width
        with other class names would silently mislabel every prediction.

        Raises:
            CheckpointError: see ``checkpoint.check_options`` and ``checkpoint.fill_frozen``.
        """
        state = checkpoint.get("state_dict")
        if not isinstance(state, dict):
            raise CheckpointError("checkpoint has no 'state_dict': not a checkpoint written by LoRAClassifier")
        hp = self.hparams
        saved = checkpoint.get("hyper_parameters", {})
        check_options(saved, hp)
        if saved.get("model_name_or_path", hp.model_name_or_path) != hp.model_name_or_path:
            rank_zero_warn(f"checkpoint was trained on {option('model', 'model_name_or_path')}={saved['model_name_or_path']!r}, "
                           f"this run loads {hp.model_name_or_path!r}", category=LoRALightningWarning)
        if self._trainer is not None and self.trainer.state.fn == "fit":  # resuming: what the optimizer state fixes
            for said in resume_said(saved, hp, checkpoint.get("class_weights")):
                rank_zero_warn(said, category=LoRALightningWarning)
        if checkpoint.get("class_weights") is not None:
            self.task.class_weight = torch.tensor(checkpoint["class_weights"], dtype=torch.float32)
        self._loaded_step = checkpoint.get("global_step")
        self.dropout_seed = checkpoint.get("dropout_seed", self.dropout_seed)
        self._saved_schedule = tuple(checkpoint["lr_schedule"]) if checkpoint.get("lr_schedule") else None
        model = f"model: {hp.model_name_or_path}, r={hp.r}, target_modules={list(hp.target_modules)}"
        fill_frozen(state, self.trainable_state_keys(), self.state_dict(), model)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None,
                             weights_only=None, **kwargs):
        """Lightning's ``load_from_checkpoint``, with two differences.

        ``kwargs`` may override how the model runs (``merge_for_inference``, ``compile``, ``torch_dtype``,
        the training options), never what its weights mean: an override of ``r``, ``lora_alpha``,
        ``target_modules``, ``use_rslora``, ``use_dora``, ``finetune``, ``train_pooler``, ``num_labels`` or
        ``id2label`` that differs from the checkpoint's is refused (Lightning would write it over the saved
        value before any check could see it). The model comes back in ``eval()`` mode, as transformers'
        ``from_pretrained`` returns one (``fit`` puts it back in training mode).

        Raises:
            CheckpointError: such an override, naming it and the checkpoint's value; an unreadable file.
        """
        if kwargs:
            check_overrides(read_hyperparameters(checkpoint_path), kwargs)
        model = super().load_from_checkpoint(checkpoint_path, map_location=map_location, hparams_file=hparams_file,
                                             strict=strict, weights_only=weights_only, **kwargs)
        return model.eval()

    def _merge_outside_fit(self) -> None:
        if self.hparams.merge_for_inference and not self.trainer.state.fn == "fit":
            merge_lora(self.model)

    def _unmerge(self) -> None:
        unmerge_lora(self.model)

    on_test_start = on_predict_start = on_validation_start = _merge_outside_fit
    on_test_end = on_predict_end = on_validation_end = _unmerge

    def configure_optimizers(self):
        """AdamW over the trainable parameters only; linear warm-up then linear decay to 0, per step
        (transformers' ``get_linear_schedule_with_warmup`` formula). With ``loraplus_lr_ratio``, the
        ``lora_B`` tensors are a second parameter group at ``ratio x learning_rate`` (LoRA+).

        The schedule's length, ``trainer.estimated_stepping_batches`` (max_epochs / max_steps,
        accumulation, limit_train_batches, devices), is read in ``on_train_start``: reading it here
        would load the training data before a resumed run restores its loader's state.
        """
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        optimizer = adamw(named, self.hparams.learning_rate, self.hparams.weight_decay, self.hparams.get("loraplus_lr_ratio"))
        self._schedule = None  # (warmup_steps, total_steps), set in on_train_start
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        # "name": the learning-rate curve's TensorBoard tag is `lr` (LearningRateMonitor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}

    def _lr_factor(self, step: int) -> float:
        """Multiplier of the peak learning rate at optimizer step ``step``."""
        if self._schedule is None:  # at construction, before the length is known: set again in on_train_start
            return 0.0
        return linear_factor(step, *self._schedule)

    def on_train_start(self) -> None:
        """Size the schedule from the run's length, and set the current learning rate from it.

        A resumed run goes on with the schedule of the run it resumes (the checkpoint's warm-up and length), after
        any stop and whatever ``max_epochs`` / ``max_steps`` are now: every step gets the learning rate it had in
        that run. A new stopping point is said in one line (a later one trains at rate 0 past the schedule's end).

        Raises:
            OptionError: the run has no step count (only ``trainer.max_time``, no max_epochs/max_steps).
        """
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise OptionError("trainer.max_epochs=-1 and trainer.max_steps=-1 give the learning-rate schedule no "
                              "length: set trainer.max_epochs or trainer.max_steps (trainer.max_time may still stop it early)")
        self._schedule = (int(self.hparams.warmup_ratio * total), int(total))
        if self._saved_schedule is not None and self.global_step > 0:
            said = resumed_schedule(self._saved_schedule, int(total), self.global_step)
            if said:
                rank_zero_warn(said, category=LoRALightningWarning)
            self._schedule = self._saved_schedule
        set_rates([config.scheduler for config in self.trainer.lr_scheduler_configs], self._lr_factor)
        from pytorch_lightning.callbacks import Timer

        timers = [c for c in self.trainer.callbacks if isinstance(c, Timer) and c.time_remaining() is not None]
        if timers:
            duration = timers[0].time_remaining() + timers[0].time_elapsed()
            rank_zero_warn(f"trainer.max_time={duration:.0f} s: the learning rate decays over {int(total)} steps "
                           "(max_epochs / max_steps); a run stopped by max_time ends before the decay does", category=LoRALightningWarning)
