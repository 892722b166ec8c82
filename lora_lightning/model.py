"""``LoRAClassifier``: a LoRA-patched ``BertForSequenceClassification`` as a ``LightningModule``."""

from __future__ import annotations

import os
from typing import Literal

import torch
import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryF1Score
from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

from lora_lightning.checkpoint import check_options, fill_frozen, keep_trainable
from lora_lightning.errors import CheckpointError, OptionError, TrainingDivergedError
from lora_lightning.hub import hub_error, resolve_model_path
from lora_lightning.lora import count_parameters, inject_lora, mark_only_lora_as_trainable, merge_lora, unmerge_lora

ID2LABEL = {0: "negative", 1: "positive"}


HALF_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def load_backbone(model_name_or_path: str, torch_dtype: str | None = None) -> nn.Module:
    """``AutoModelForSequenceClassification`` with 2 labels (``negative``/``positive``).

    ``torch_dtype`` (``"bfloat16"``/``"float16"``/``None`` for float32) is the dtype of the loaded
    weights; LoRA and the other trained tensors are float32 regardless.

    The classifier head is new (randomly initialised from the global seed); everything else
    comes from ``model_name_or_path``. Remote code is never run.

    Raises:
        ModelNotFoundError: the model cannot be found locally, in a package, or on the Hub (one line
            that says how to point at a local folder).
    """
    path = resolve_model_path(model_name_or_path)
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=2, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()},
            trust_remote_code=False, dtype=HALF_DTYPES.get(torch_dtype, torch.float32),
        )
    except OSError as error:
        raise hub_error(model_name_or_path, error) from None


class LoRAClassifier(pl.LightningModule):
    """Binary sentence classifier: a frozen pretrained encoder with LoRA (Hu et al. 2021,
    arXiv:2106.09685) in its attention, plus a trained classification head.

    Batches are dicts from ``SST2DataModule``: ``input_ids``/``attention_mask``/``token_type_ids``
    of shape ``(B, T)`` and ``labels`` of shape ``(B,)``; logits are ``(B, 2)``.

    Args:
        model_name_or_path: Hub id or local folder of a BERT-like encoder.
        r: LoRA rank.
        lora_alpha: LoRA scaling numerator; the update is scaled by ``lora_alpha / r``.
        lora_dropout: dropout probability on the LoRA branch input.
        target_modules: names or suffixes of the ``nn.Linear`` layers that get LoRA.
        train_pooler: also train BERT's pooler (frozen by default).
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
        compile: run the backbone's forward through ``torch.compile(dynamic=True)`` (module and
            checkpoint keys unchanged); compiling costs time up front, see BENCHMARKS.md.
        merge_for_inference: fold LoRA into the base weights for ``test``/``predict``/``validate``
            runs (outside ``fit``), so inference costs what the base model costs; unmerged after.

    Checkpoints hold only the trainable tensors (LoRA ``A``/``B``, the head, anything else set
    trainable), with the optimizer state and the hyperparameters; the frozen base is rebuilt from
    ``model_name_or_path`` on load, and a checkpoint that does not fit is refused by name.

    Raises:
        OptionError: bad LoRA options or targets (see ``inject_lora``), ``warmup_ratio``
            outside [0, 1), ``learning_rate <= 0``, ``finetune`` not ``lora``/``full``.
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
        finetune: Literal["lora", "full"] = "lora",
    ) -> None:
        super().__init__()
        if not learning_rate > 0:
            raise OptionError(f"model.learning_rate must be > 0, got {learning_rate}")
        if not 0 <= warmup_ratio < 1:
            raise OptionError(f"model.warmup_ratio must be in [0, 1), got {warmup_ratio}")
        self.save_hyperparameters()
        self.model = load_backbone(model_name_or_path, torch_dtype)
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes as found
        if finetune not in ("lora", "full"):
            raise OptionError(f"model.finetune must be 'lora' or 'full', got {finetune!r}")
        self.modules_to_save = ["classifier"] + (["pooler"] if train_pooler else [])
        if finetune == "full":
            self.lora_modules = []
            self.model.requires_grad_(True)
            trainable = [name for name, _ in self.model.named_parameters()]
        else:
            try:
                self.lora_modules = inject_lora(self.model, list(target_modules), r, lora_alpha, lora_dropout)
            except ValueError as error:
                raise OptionError(f"model: {error}") from None
            trainable = mark_only_lora_as_trainable(self.model, self.modules_to_save)
        for p in trainable:
            param = self.model.get_parameter(p)
            param.data = param.data.float()  # fp32 master weights for what trains (C11)
        # Checkpoints hold the trainable tensors only; on_load_checkpoint checks them, then fills in the frozen base.
        self.loss_fn = nn.CrossEntropyLoss()
        metrics = MetricCollection({"acc": BinaryAccuracy(), "f1": BinaryF1Score()})
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids ``(B, T)`` -> logits ``(B, 2)``."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    def _shared_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(loss, preds (B,), labels (B,))``."""
        labels = batch["labels"]
        logits = self(**{k: v for k, v in batch.items() if k != "labels"})
        return self.loss_fn(logits, labels), logits.argmax(-1), labels

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy on one batch.

        Raises:
            TrainingDivergedError: the loss is NaN or infinite (checkpoints written so far are kept).
        """
        loss, _, labels = self._shared_step(batch)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"train_loss is {loss.item()} at step {self.global_step}: training diverged; checkpoints "
                f"saved so far are kept; try a lower model.learning_rate (now {self.hparams.learning_rate})"
            )
        self.log("train_loss", loss, prog_bar=True, batch_size=labels.numel())
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str, metrics: MetricCollection) -> None:
        loss, preds, labels = self._shared_step(batch)
        metrics.update(preds, labels)
        self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=labels.numel(), sync_dist=True)
        self.log_dict(metrics, prog_bar=True, batch_size=labels.numel())

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Class probabilities ``(B, 2)`` (softmax of the logits)."""
        return self(**{k: v for k, v in batch.items() if k != "labels"}).softmax(-1)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """Reseed torch from ``(seed, global_step)`` (seed from ``seed_everything``): dropout masks depend
        only on the step, so a resumed run matches an uninterrupted one exactly."""
        torch.manual_seed(int(os.environ.get("PL_GLOBAL_SEED", 0)) * 1_000_003 + self.global_step)

    def on_fit_start(self) -> None:
        """Log trainable / total parameter counts, and register ``hp/val_acc`` as the hyperparameter
        metric (TensorBoard's hparams tab then shows val_acc against r, lora_alpha, learning_rate)."""
        trainable, total = count_parameters(self.model)
        what = ("full fine-tuning" if self.hparams.finetune == "full" else
                f"LoRA r={self.hparams.r} on {len(self.lora_modules)} layers ({', '.join(self.hparams.target_modules)})")
        rank_zero_info(
            f"{what}: "
            f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
        )
        if self.logger is not None:
            self.logger.log_hyperparams(
                {**self.hparams, "trainable_params": trainable, "total_params": total}, {"hp/val_acc": 0.0}
            )

    def on_validation_epoch_end(self) -> None:
        """Copy the epoch's val accuracy to ``hp/val_acc`` (the hparams tab's metric) during fit."""
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.log("hp/val_acc", self.val_metrics["acc"].compute())

    def setup(self, stage: str) -> None:
        """Check that ``torch_dtype`` and ``trainer.precision`` can run on this accelerator.

        Raises:
            OptionError: a half-precision base without a matching mixed precision, or ``float16``
                on CPU (one message naming ``model.torch_dtype`` and ``trainer.precision``).
        """
        if self.hparams.compile and not hasattr(self.model.forward, "_torchdynamo_orig_callable"):
            self.model.forward = torch.compile(self.model.forward, dynamic=True)
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

    def trainable_state_keys(self) -> dict[str, torch.Size]:
        """State-dict keys (and shapes) that a checkpoint holds: the trainable parameters."""
        return {name: p.shape for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only the trainable tensors: an adapter-sized checkpoint, not a copy of BERT."""
        checkpoint["state_dict"] = keep_trainable(checkpoint["state_dict"], self.trainable_state_keys())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint that does not fit, naming the option or the first mismatching key;
        then fill in the frozen base (already loaded from ``model_name_or_path``).

        The structure options saved with the checkpoint (``finetune``, ``r``, ``lora_alpha``,
        ``target_modules``, ``train_pooler``) must equal this model's: a different ``lora_alpha``
        would silently rescale the update.

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
            rank_zero_warn(f"checkpoint was trained on model.model_name_or_path={saved['model_name_or_path']!r}, "
                           f"this run loads {hp.model_name_or_path!r}")
        model = f"model: {hp.model_name_or_path}, r={hp.r}, target_modules={list(hp.target_modules)}"
        fill_frozen(state, self.trainable_state_keys(), self.state_dict(), model)

    def _merge_outside_fit(self) -> None:
        if self.hparams.merge_for_inference and not self.trainer.state.fn == "fit":
            merge_lora(self.model)

    def _unmerge(self) -> None:
        unmerge_lora(self.model)

    on_test_start = on_predict_start = on_validation_start = _merge_outside_fit
    on_test_end = on_predict_end = on_validation_end = _unmerge

    def configure_optimizers(self):
        """AdamW over the trainable parameters only; linear warm-up then linear decay, per step."""
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
        total = self.trainer.estimated_stepping_batches
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.hparams.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
