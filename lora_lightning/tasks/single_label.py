"""``single_label_classification``: one class per text, of K; softmax over K logits, cross-entropy.

Logged: ``acc`` and ``f1`` for K = 2 (SST-2's), ``acc``, ``macro_f1`` and ``f1_<name>`` per class for K > 2
(``metrics.classification_metrics``); the confusion matrix as a figure. ``class_weights``: ``balanced`` is
scikit-learn's ``compute_class_weight("balanced")``, ``n_rows / (K * count_k)``, the weight of cross-entropy's
``weight``.
"""

from __future__ import annotations

import torch
from datasets import Value
from torch.nn import functional as F

from lora_lightning.errors import DataFileError, option
from lora_lightning.metrics import classification_metrics, confusion_figure, confusion_matrix
from lora_lightning.tables import INTEGER, Table, encode_labels, label_values
from lora_lightning.tasks.base import LabelSpec, Task, number_of, sort_values, two_or_more


class SingleLabel(Task):
    problem_type = "single_label_classification"
    min_labels = 2
    monitor = "acc"
    weighted = True
    sst2_names = True
    takes_label_columns = False
    submission = True

    @classmethod
    def _values(cls, table: Table, spec: LabelSpec) -> list:
        """The column's labels (``tables.label_values``), with what to pass when they are not one class each."""
        try:
            return label_values(table, spec.column)
        except DataFileError as error:
            raise DataFileError(f"{error}{hint(table[spec.column], spec.delimiter)}") from None

    @classmethod
    def label_values(cls, train, spec: LabelSpec) -> list:
        if spec.label_names is not None:
            return list(range(len(spec.label_names)))
        if spec.labels is not None:
            return list(spec.labels)
        table = cls.read_train(train, spec)
        values = sort_values(cls._values(table, spec))
        if len(values) < cls.min_labels:
            more = hint(table[spec.column], spec.delimiter)
            if more:
                raise DataFileError(f"{table.path}: every row has the label {values[0]!r}{more}")
        two_or_more(table, values, spec.column, cls.min_labels)
        return values

    @classmethod
    def encode(cls, table: Table, spec: LabelSpec, classes: list, known: str) -> list[int]:
        return encode_labels(table, cls._values(table, spec), {v: i for i, v in enumerate(classes)}, known)

    @classmethod
    def feature(cls, k: int):
        return Value("int64")

    @classmethod
    def strata(cls, labels) -> list:
        return list(labels)  # every class in train and in val, in proportion (C36)

    @classmethod
    def counts(cls, labels, k: int) -> tuple[list[int], int]:
        return torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=k).tolist(), len(labels)

    @classmethod
    def balanced(cls, counts: tuple[list[int], int], names: list[str]) -> torch.Tensor:
        per_class, rows = counts
        empty = [n for n, c in zip(names, per_class) if c == 0]
        if empty:
            raise DataFileError(f"{option('model', 'class_weights')}=balanced: the train rows hold no {empty[0]!r}: "
                                "a class without rows has no frequency to weight by; give the weights as numbers")
        return torch.tensor([rows / (len(names) * c) for c in per_class], dtype=torch.float32)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = self.class_weight.to(logits.device, logits.dtype) if self.class_weight is not None else None
        return F.cross_entropy(logits, labels, weight=weight)

    def outputs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(-1)

    def metrics(self):
        return classification_metrics(self.names)

    def update(self, metrics, logits: torch.Tensor, labels: torch.Tensor) -> None:
        metrics.update(logits.argmax(-1), labels)

    def figure_state(self):
        return confusion_matrix(len(self.names))

    def update_figure(self, state, logits: torch.Tensor, labels: torch.Tensor) -> None:
        state.update(logits.argmax(-1), labels)

    def figure(self, state, stage: str, step: int):
        counts = state.compute()  # (K, K), on every process: it syncs them
        return (confusion_figure(state, counts, self.names, f"{stage} confusion matrix, step {step}"),
                f"{stage}_confusion_matrix")

    def prediction_header(self, text_columns: list[str]) -> list[str]:
        return [*text_columns, "label", "probability"]

    def prediction_cells(self, output: list[float]) -> list[str]:
        best = max(range(len(output)), key=output.__getitem__)
        return [self.names[best], f"{output[best]:.6f}"]

    def describe(self) -> str:
        return (f"{self.problem_type}: {len(self.names)} classes {self.names}, softmax + cross-entropy"
                f"{self.weights_said()}")


def hint(values: list, delimiter: str) -> str:
    """What to pass when a label column does not hold one class per row: lists of labels (``0,5``: multi-label),
    or numbers with decimals (``5.000``, ``3.8``: a regression target)."""
    texts = [v for v in values if isinstance(v, str)]
    if any(isinstance(v, list) for v in values) or any(delimiter in t and all(p.strip() for p in t.split(delimiter))
                                                       for t in texts):
        return (f"; for several labels per text (here lists such as {next((t for t in texts if delimiter in t), '[...]')!r})"
                f" pass --data.problem_type multi_label_classification")
    numbers = [number_of(v) for v in values]
    if numbers and all(n is not None for n in numbers) and any(
            not (isinstance(v, int) or (isinstance(v, str) and INTEGER.fullmatch(v.strip()))) for v in values):
        return "; for a numeric target (a score such as 5.000) pass --data.problem_type regression"
    return ""
