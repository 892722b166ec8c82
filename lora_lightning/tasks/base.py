"""What a problem type decides, in one place per type: how a file's label cells become targets, the loss, the
metrics, how logits become predictions and prediction-file cells, and what the export's ``config.json`` says.

``Task`` is the interface the data module, the model, the prediction writer and the export ask; a problem type
is one file beside this one (``single_label.py``, ``multi_label.py``, ``regression.py``), named as transformers
names it in ``config.problem_type``. A task knows nothing of Lightning.

Data side (class methods, on a file's ``tables.Table`` and the label options, ``LabelSpec``):
``label_values`` (the classes in class-id order, or the target columns), ``encode`` (each row's target),
``counts`` (what ``balanced`` class weights are computed from). Model side (an instance, for K outputs named
``names``): ``loss``, ``outputs``, ``metrics``, ``update``, ``figure``, ``prediction_header`` / ``prediction_cells``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torchmetrics import Metric, MetricCollection

from lora_lightning.errors import DataFileError, OptionError, option
from lora_lightning.tables import Table, check_columns


@dataclass
class LabelSpec:
    """The data options that say where a file's labels are and how to read them.

    Attributes:
        column: ``data.label_column``: the column with the label (a class, a list of classes, a number).
        columns: ``data.label_columns``: one column per label (multi-label 0/1) or per target (regression);
            ``None``: ``column``.
        delimiter: ``data.label_delimiter``: what separates the labels of one multi-label cell.
        labels: ``data.labels``: the classes (or targets) in id order; ``None``: from the train file.
        label_names: ``data.label_names``: display names of classes ``0..K-1`` when the file holds the ids.
    """

    column: str = "label"
    columns: list[str] | None = None
    delimiter: str = ","
    labels: list[str] | None = None
    label_names: list[str] | None = None

    @property
    def label_columns(self) -> list[str]:
        """The columns the labels are read from."""
        return list(self.columns) if self.columns else [self.column]

    def options(self) -> dict[str, str]:
        """column -> the option that named it, for ``check_columns``."""
        if self.columns:
            return {c: option("data", "label_columns") for c in self.columns}
        return {self.column: option("data", "label_column")}


class Task:
    """One problem type, for ``K = len(names)`` model outputs.

    Args:
        names: the output names in id order (``id2label``'s values): classes, labels or targets.
        threshold: multi-label's decision threshold on each label's probability (unused by the others).
        class_weight: ``(K,)`` the loss's class weights (single-label) or per-label positive weights
            (multi-label), resolved by ``resolve_class_weights``; ``None``: unweighted.
    """

    problem_type: ClassVar[str]
    min_labels: ClassVar[int] = 1
    monitor: ClassVar[str]  # the validation metric a checkpoint is chosen by (higher is better), unprefixed
    weighted: ClassVar[bool] = False  # whether class_weights mean anything for this type
    sst2_names: ClassVar[bool] = False  # two outputs without names are SST-2's negative / positive
    takes_label_columns: ClassVar[bool] = True  # may read its targets from several columns (label_columns)
    submission: ClassVar[bool] = False  # writes GLUE's index / prediction file for a test.tsv with an index

    def __init__(self, names: Sequence[str], threshold: float = 0.5, class_weight: torch.Tensor | None = None) -> None:
        self.names, self.threshold, self.class_weight = list(names), float(threshold), class_weight

    # --- data -------------------------------------------------------------------------------------
    @classmethod
    def label_values(cls, train: Callable[[], Table], spec: LabelSpec) -> list:
        """The classes (or targets) in id order: those the options fix, else read from the train file's table
        (``train()``, called only then).

        Raises:
            DataFileError: naming the file, line and value.
        """
        raise NotImplementedError

    @classmethod
    def read_train(cls, train: Callable[[], Table], spec: LabelSpec) -> Table:
        """The train file's table, with its label column(s) checked."""
        table = train()
        cls.check_columns(table, spec)
        return table

    @classmethod
    def encode(cls, table: Table, spec: LabelSpec, classes: list, known: str) -> list:
        """Each row's target, for the ``classes`` (``label_values``' of the train file); ``known`` says which
        labels are allowed, for errors.

        Raises:
            DataFileError: a label outside ``classes`` or of the wrong kind, naming the file, line and value.
        """
        raise NotImplementedError

    @classmethod
    def feature(cls, k: int):
        """The ``datasets`` feature of the encoded ``label`` column."""
        raise NotImplementedError

    @classmethod
    def counts(cls, labels: Sequence, k: int) -> tuple[list[int], int]:
        """``(count per output, rows)`` of the train targets ``labels``: what ``balanced`` weights come from."""
        raise NotImplementedError

    @classmethod
    def strata(cls, labels: Sequence) -> list:
        """What a split of single rows keeps in proportion (``splits.stratified_split``): one stratum here."""
        return [0] * len(labels)

    @classmethod
    def check_columns(cls, table: Table, spec: LabelSpec) -> None:
        """The label column(s) exist in ``table`` (see ``tables.check_columns``)."""
        check_columns(table, spec.options())

    @classmethod
    def resolve_class_weights(cls, spec, counts: tuple[list[int], int] | None, names: list[str]) -> torch.Tensor | None:
        """``model.class_weights`` as a ``(K,)`` float tensor: ``None``, ``"balanced"`` (from the train ``counts``), or
        K numbers.

        Raises:
            OptionError: weights for a type that takes none, another number than K, a weight <= 0, ``balanced``
                without the train counts, or a class with no train row.
        """
        if spec is None:
            return None
        flag = option("model", "class_weights")
        if not cls.weighted:
            raise OptionError(f"{flag}={spec!r}: a {cls.problem_type} loss takes no class weights: leave it null")
        if isinstance(spec, str):
            if spec != "balanced":
                raise OptionError(f"{flag} must be 'balanced', a list of {len(names)} numbers, or null; got {spec!r}")
            if counts is None:
                raise OptionError(f"{flag}=balanced needs the train rows' labels: fit with a data module "
                                  "(trainer.fit(model, datamodule=dm)), or give the weights as numbers")
            return cls.balanced(counts, names)
        weights = [float(w) for w in spec]
        if len(weights) != len(names):
            raise OptionError(f"{flag} has {len(weights)} weights, but the model has {len(names)} outputs {names}: "
                              f"give one per class, in id order")
        if not all(w > 0 for w in weights):
            raise OptionError(f"{flag} must be > 0 each, got {weights}")
        return torch.tensor(weights, dtype=torch.float32)

    @classmethod
    def balanced(cls, counts: tuple[list[int], int], names: list[str]) -> torch.Tensor:
        raise NotImplementedError

    # --- model ------------------------------------------------------------------------------------
    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``logits (B, K)``, ``labels`` as ``encode`` gives them (batched) -> the mean loss, a scalar."""
        raise NotImplementedError

    def outputs(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits (B, K)`` -> what ``predict`` returns per row: probabilities or values ``(B, K)``."""
        raise NotImplementedError

    def metrics(self) -> MetricCollection:
        """The evaluation metrics, unprefixed (``clone(prefix="val_")`` names them); a ``ClasswiseWrapper`` inside
        is logged per output (``val_f1_<name>``)."""
        raise NotImplementedError

    def update(self, metrics: MetricCollection, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Update ``metrics`` with one batch."""
        raise NotImplementedError

    def figure_state(self) -> Metric | None:
        """A metric that gathers what the epoch's figure draws (synced across processes), or ``None`` for no figure."""
        return None

    def update_figure(self, state: Metric, logits: torch.Tensor, labels: torch.Tensor) -> None:
        state.update(self.outputs(logits), labels)

    def figure(self, state: Metric, stage: str, step: int):
        """``(figure, tag)``: the epoch's matplotlib ``Figure`` from ``state`` and its TensorBoard tag
        (``<stage>_confusion_matrix``), or ``(None, None)``."""
        return None, None

    def prediction_header(self, text_columns: list[str]) -> list[str]:
        """The prediction file's header: the text column(s), then this type's own."""
        raise NotImplementedError

    def prediction_cells(self, output: list[float]) -> list[str]:
        """One row's cells after its text(s), from ``outputs``' row ``(K,)``."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the log: the problem type, its outputs, loss and weights."""
        raise NotImplementedError

    def answer(self, output: list[float], all_scores: bool = False) -> dict:
        """One row's answer to a request, as transformers' ``pipeline("text-classification")`` gives it: the best
        output's ``label`` and ``score``; ``scores`` (every output's) with ``all_scores``."""
        best = max(range(len(output)), key=output.__getitem__)
        answer = {"label": self.names[best], "score": float(output[best])}
        if all_scores:
            answer["scores"] = [{"label": n, "score": float(v)} for n, v in zip(self.names, output)]
        return answer

    @classmethod
    def config_kwargs(cls) -> dict:
        """What ``from_pretrained`` needs beyond ``num_labels`` / ``id2label`` to build this type's model (a
        pipeline then applies a sigmoid per label, or nothing to a regression's values); none for one class."""
        return {} if cls.sst2_names else {"problem_type": cls.problem_type}

    def weights_said(self) -> str:
        if self.class_weight is None:
            return ""
        shown = ", ".join(f"{n} {w:.3g}" for n, w in zip(self.names, self.class_weight.tolist()))
        return f"; {self.weight_kind}: {shown}"

    weight_kind: ClassVar[str] = "class weights"


def number_of(value) -> float | None:
    """``value`` as a finite float (an int, a float, or text of a number: ``5.000``, ``4``, ``-0.5``), else ``None``."""
    import math

    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def sort_values(values) -> list:
    """Distinct label values in class-id order: integers by value, text by code point."""
    return sorted(set(values))


def two_or_more(table: Table, values: list, column: str, min_labels: int) -> None:
    """Refuse a train file with fewer classes than a model of this type needs."""
    if len(values) < min_labels:
        shown = repr(values[0]) if values else "none"
        raise DataFileError(f"{table.path}: every row has the label {shown}: a classifier needs at least {min_labels} "
                            f"classes in {option('data', 'train_file')} (column {column!r})")
