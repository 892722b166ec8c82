"""``regression``: a numeric target per text (one column, or several: ``data.label_columns``, one output each);
the head's K outputs are the values, mean squared error.

A target is any number: ``5.000`` and ``4`` in a CSV, JSON's ``4.5``. Logged (torchmetrics): ``pearson``,
``spearman`` (over every target's values pooled), ``mse``, ``mae``; a predicted-against-true scatter as a
figure. Class weights mean nothing here and are refused.
"""

from __future__ import annotations

import torch
from datasets import Sequence, Value
from torch.nn import functional as F
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection, PearsonCorrCoef, SpearmanCorrCoef
from torchmetrics.aggregation import CatMetric

from lora_lightning.errors import DataFileError, option
from lora_lightning.tables import Table
from lora_lightning.tasks.base import LabelSpec, Task, number_of


class Regression(Task):
    problem_type = "regression"
    min_labels = 1
    monitor = "pearson"

    @classmethod
    def label_values(cls, train, spec: LabelSpec) -> list:
        columns = spec.label_columns
        if spec.labels is not None and list(spec.labels) != columns:
            raise DataFileError(f"{option('data', 'labels')}={spec.labels}: a regression model's outputs are its target "
                                f"columns {columns}")
        return columns

    @classmethod
    def encode(cls, table: Table, spec: LabelSpec, classes: list, known: str) -> list[list[float]]:
        columns = [table[c] for c in spec.label_columns]
        out = []
        for i, row in enumerate(zip(*columns)):
            values = [number_of(v) for v in row]
            for name, raw, value in zip(spec.label_columns, row, values):
                if value is None:
                    what = "empty" if raw is None or (isinstance(raw, str) and not raw.strip()) else repr(raw)
                    raise DataFileError(f"{table.where(i)}: target {what} in column {name!r} is not a number: a regression "
                                        "target is a finite number (5.000, 4, -0.5); fix or drop the row")
            out.append(values)
        return out

    @classmethod
    def feature(cls, k: int):
        return Sequence(Value("float32"), length=k)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits, labels.to(logits.dtype))

    def outputs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def metrics(self) -> MetricCollection:
        return MetricCollection({"pearson": PearsonCorrCoef(), "spearman": SpearmanCorrCoef(), "mse": MeanSquaredError(),
                                 "mae": MeanAbsoluteError()}, compute_groups=False)

    def update(self, metrics, logits: torch.Tensor, labels: torch.Tensor) -> None:
        metrics.update(logits.float().flatten(), labels.float().flatten())

    def figure_state(self):
        return CatMetric()

    def update_figure(self, state, logits: torch.Tensor, labels: torch.Tensor) -> None:
        state.update(torch.stack([logits.detach().float().flatten(), labels.float().flatten()], dim=1))

    def figure(self, state, stage: str, step: int):
        from lora_lightning.metrics import scatter_figure

        pairs = state.compute() if state.update_count else torch.zeros(0, 2)  # (N, 2): predicted, true; synced
        pairs = pairs.reshape(-1, 2).cpu()
        return scatter_figure(pairs[:, 1], pairs[:, 0], f"{stage}: predicted against true, step {step}"), f"{stage}_scatter"

    def prediction_header(self, text_columns: list[str]) -> list[str]:
        return [*text_columns, *self.names]

    def prediction_cells(self, output: list[float]) -> list[str]:
        return [f"{v:.6f}" for v in output]

    def answer(self, output: list[float], all_scores: bool = False) -> dict:
        """The value as ``score`` under the target's name (the pipeline's answer for a regression); several targets:
        each under ``scores``."""
        answer = {"label": self.names[0], "score": float(output[0])}
        if all_scores or len(output) > 1:
            answer["scores"] = [{"label": n, "score": float(v)} for n, v in zip(self.names, output)]
        return answer

    def describe(self) -> str:
        return f"{self.problem_type}: {len(self.names)} target(s) {self.names}, mean squared error"
