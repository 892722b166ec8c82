"""``multi_label_classification``: any number of K labels per text (none too); a sigmoid per label, binary
cross-entropy, a decision threshold on each label's probability (``model.threshold``, 0.5 unless set).

Labels come as one column holding a list: text split by ``data.label_delimiter`` (``0,4``; an empty cell is no
label) or a JSON / Parquet list (``[0, 4]``), compared as text like single labels; or as one 0/1 column per label
(``data.label_columns``). Logged: ``micro_f1``, ``macro_f1``, ``f1_<label>`` per label, ``subset_acc`` (every
label of a row right: exact match), at the threshold. ``class_weights``: a positive weight per label
(``pos_weight`` of the binary cross-entropy); ``balanced`` is ``negatives / positives`` of each label in train,
as PyTorch's ``BCEWithLogitsLoss`` documentation defines it.
"""

from __future__ import annotations

import torch
from datasets import Sequence, Value
from torch.nn import functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MultilabelExactMatch, MultilabelF1Score
from torchmetrics.wrappers import ClasswiseWrapper

from lora_lightning.errors import DataFileError, option
from lora_lightning.tables import DIGITS, INTEGER, Table
from lora_lightning.tasks.base import LabelSpec, Task, two_or_more

OTHER_DELIMITERS = (",", ";", "|")  # what a list of labels is written with, to tell an ambiguous cell
ONE, ZERO = ("1", "1.0", "true"), ("0", "0.0", "false")


class MultiLabel(Task):
    problem_type = "multi_label_classification"
    min_labels = 1
    monitor = "macro_f1"
    weighted = True
    weight_kind = "positive weights"

    # --- data -------------------------------------------------------------------------------------
    @classmethod
    def cells(cls, table: Table, spec: LabelSpec) -> list[list[str]]:
        """Each row's labels as text, from one column (a delimited string, a list, a number, or empty).

        Raises:
            DataFileError: a value that is no label list (a float, a dict, a list holding one), with its line.
        """
        rows = []
        for i, value in enumerate(table[spec.column]):
            if value is None:
                items = []
            elif isinstance(value, str):
                items = [part.strip() for part in value.split(spec.delimiter)] if value.strip() else []
                if any(not part for part in items):
                    raise DataFileError(f"{table.where(i)}: label cell {value!r} of column {spec.column!r} has an empty label "
                                        f"between {option('data', 'label_delimiter')}={spec.delimiter!r} separators")
            elif isinstance(value, int) and not isinstance(value, bool):
                items = [str(value)]
            elif isinstance(value, (list, tuple)) and all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                                          for v in value):
                items = [str(v).strip() for v in value]
            else:
                raise DataFileError(f"{table.where(i)}: label {value!r} ({type(value).__name__}) in column {spec.column!r}: "
                                    f"expected labels separated by {spec.delimiter!r}, or a list of labels")
            rows.append(items)
        return rows

    @classmethod
    def label_values(cls, train, spec: LabelSpec) -> list:
        if spec.columns:
            if spec.labels is not None and list(spec.labels) != list(spec.columns):
                raise DataFileError(f"{option('data', 'labels')}={spec.labels} differ from the label columns {spec.columns}")
            return list(spec.columns)
        if spec.label_names is not None:
            return list(range(len(spec.label_names)))
        if spec.labels is not None:
            return list(spec.labels)
        table = cls.read_train(train, spec)
        cells = cls.cells(table, spec)
        items = {item for row in cells for item in row}
        cls._check_delimiter(table, cells, items, spec)
        values = sorted(int(v) for v in items) if items and all(INTEGER.fullmatch(v) for v in items) else sorted(items)
        two_or_more(table, values, spec.column, cls.min_labels)
        return values

    @classmethod
    def _check_delimiter(cls, table: Table, cells: list[list[str]], items: set, spec: LabelSpec) -> None:
        """Refuse a cell written with another delimiter than ``label_delimiter`` (``0;4`` when it is ``,``): read
        as one label, it would make a class of its own."""
        for i, row in enumerate(cells):
            for item in row:
                for other in OTHER_DELIMITERS:
                    if other == spec.delimiter or other not in item:
                        continue
                    parts = [p.strip() for p in item.split(other)]
                    if all(p and (p in items or DIGITS.fullmatch(p)) for p in parts):
                        raise DataFileError(f"{table.where(i)}: label cell {item!r} of column {spec.column!r} is "
                                            f"separated by {other!r}, but {option('data', 'label_delimiter')}="
                                            f"{spec.delimiter!r}: pass --data.label_delimiter '{other}' (or fix the row)")

    @classmethod
    def encode(cls, table: Table, spec: LabelSpec, classes: list, known: str) -> list[list[float]]:
        if spec.columns:
            return cls._encode_columns(table, spec)
        index = {str(v): i for i, v in enumerate(classes)}
        items = set(index)
        cells = cls.cells(table, spec)
        out = []
        for i, row in enumerate(cells):
            target = [0.0] * len(classes)
            for item in row:
                if item not in index:
                    cls._check_delimiter(table, [row], items, spec)
                    raise DataFileError(f"{table.where(i)}: label {item!r} is not {known}: add rows with it to the train "
                                        "file, or map it to one of those labels (or drop the row)")
                target[index[item]] = 1.0
            out.append(target)
        return out

    @classmethod
    def _encode_columns(cls, table: Table, spec: LabelSpec) -> list[list[float]]:
        """One 0/1 column per label (``true``/``false`` and ``1.0``/``0.0`` too) -> each row's multi-hot target.

        Raises:
            DataFileError: a cell holding anything else, naming its line, column and value.
        """
        columns = [table[c] for c in spec.columns]
        out = []
        for i, row in enumerate(zip(*columns)):
            target = []
            for name, value in zip(spec.columns, row):
                text = str(value).strip().lower() if value is not None else ""
                if isinstance(value, bool) or text in ONE + ZERO:
                    target.append(1.0 if (value is True or text in ONE) else 0.0)
                else:
                    raise DataFileError(f"{table.where(i)}: column {name!r} holds {value!r}, but a label column of "
                                        f"{option('data', 'label_columns')} holds 0 or 1")
            out.append(target)
        return out

    @classmethod
    def feature(cls, k: int):
        return Sequence(Value("float32"), length=k)

    @classmethod
    def strata(cls, labels) -> list:
        return [tuple(v) for v in labels]  # label sets: a set of one row trains

    @classmethod
    def counts(cls, labels, k: int) -> tuple[list[int], int]:
        targets = torch.as_tensor(list(labels), dtype=torch.float32).reshape(-1, k)
        return targets.sum(0).long().tolist(), targets.shape[0]

    @classmethod
    def balanced(cls, counts: tuple[list[int], int], names: list[str]) -> torch.Tensor:
        positives, rows = counts
        empty = [n for n, c in zip(names, positives) if c == 0]
        if empty:
            raise DataFileError(f"{option('model', 'class_weights')}=balanced: no train row has the label {empty[0]!r}: "
                                "give the weights as numbers")
        return torch.tensor([(rows - c) / c for c in positives], dtype=torch.float32)

    # --- model ------------------------------------------------------------------------------------
    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = self.class_weight.to(logits.device, logits.dtype) if self.class_weight is not None else None
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=weight)

    def outputs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def metrics(self) -> MetricCollection:
        k, t = len(self.names), self.threshold
        # no compute groups: the per-label F1 is computed by the module, the others by Lightning (metrics.py)
        return MetricCollection({
            "micro_f1": MultilabelF1Score(num_labels=k, threshold=t, average="micro"),
            "macro_f1": MultilabelF1Score(num_labels=k, threshold=t, average="macro"),
            "subset_acc": MultilabelExactMatch(num_labels=k, threshold=t),
            "f1": ClasswiseWrapper(MultilabelF1Score(num_labels=k, threshold=t, average=None), labels=self.names, prefix="f1_"),
        }, compute_groups=False)

    def update(self, metrics, logits: torch.Tensor, labels: torch.Tensor) -> None:
        metrics.update(logits.sigmoid(), labels.long())

    def prediction_header(self, text_columns: list[str]) -> list[str]:
        return [*text_columns, "labels", *(f"probability_{n}" for n in self.names)]

    def prediction_cells(self, output: list[float]) -> list[str]:
        chosen = [n for n, p in zip(self.names, output) if p >= self.threshold]
        return [",".join(chosen), *(f"{p:.6f}" for p in output)]

    def answer(self, output: list[float], all_scores: bool = False) -> dict:
        """The pipeline's answer, and ``labels``: those at or above the threshold (none too)."""
        return {**super().answer(output, all_scores), "labels": [n for n, p in zip(self.names, output) if p >= self.threshold]}

    def describe(self) -> str:
        return (f"{self.problem_type}: {len(self.names)} labels {self.names}, a sigmoid per label + binary "
                f"cross-entropy, threshold {self.threshold:g}{self.weights_said()}")
