"""What a ``LoRAClassifier`` logs: its torchmetrics by number of classes, the confusion-matrix figure, and the
hyperparameters as TensorBoard's HPARAMS tab shows them. torchmetrics, matplotlib (Agg) and torch's TensorBoard
summary; no Lightning module code.
"""

from __future__ import annotations

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pytorch_lightning.loggers import TensorBoardLogger
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (BinaryAccuracy, BinaryConfusionMatrix, BinaryF1Score, MulticlassAccuracy,
                                         MulticlassConfusionMatrix, MulticlassF1Score)
from torchmetrics.wrappers import ClasswiseWrapper

__all__ = ["classification_metrics", "confusion_matrix", "confusion_figure", "scatter_figure", "hparams_for_board",
           "register_hparams_metric"]


def hparams_for_board(params: dict) -> dict:
    """Hyperparameters as TensorBoard's HPARAMS tab shows them well: no internal keys (LightningCLI's
    ``_class_path``, ``_instantiator``), booleans and ``None`` as text (``true``/``false``/``null``; TensorBoard
    would draw a boolean as ``0.0000``), lists and dicts as their text, numbers and strings as they are."""
    out = {}
    for key, value in params.items():
        if str(key).rsplit(".", 1)[-1].startswith("_"):
            continue
        if isinstance(value, bool) or value is None:
            value = {True: "true", False: "false", None: "null"}[value]
        elif not isinstance(value, (int, float, str)):
            value = str(list(value) if isinstance(value, tuple) else value)
        out[key] = value
    return out


def register_hparams_metric(logger: TensorBoardLogger, params: dict, metric: str) -> None:
    """Write TensorBoard's hparams summary naming ``metric`` as the run's metric, without logging a
    placeholder value for it (``log_hyperparams(params, {metric: 0})`` would put a 0.0 at step 0 on
    the metric's curve); the metric's real values are logged by ``self.log`` as training goes.
    ``params`` are ``hparams_for_board``'s; written with torch's public ``summary.hparams`` and the
    ``SummaryWriter``'s ``file_writer``."""
    from torch.utils.tensorboard.summary import hparams

    for summary in hparams(params, {metric: 0}):
        logger.experiment.file_writer.add_summary(summary)


def classification_metrics(names: list[str]) -> MetricCollection:
    """The evaluation metrics for ``K = len(names)`` classes, unprefixed (``clone(prefix="val_")`` names them).

    Each is updated with ``preds (B,)`` and ``labels (B,)``, class indices in ``0..K-1``.
    K = 2: ``acc`` (``BinaryAccuracy``) and ``f1`` (``BinaryF1Score``, class 1 the positive one), as
    for SST-2 always. K > 2: ``acc`` (``MulticlassAccuracy``, micro: the share of rows right),
    ``macro_f1`` (``MulticlassF1Score``, the mean of the per-class F1) and ``f1``, a ``ClasswiseWrapper``
    of the per-class F1 whose ``compute()`` is a dict ``{"f1_<name>": value}`` (in a collection
    prefixed ``val_``: ``val_f1_<name>``).
    """
    if len(names) == 2:
        return MetricCollection({"acc": BinaryAccuracy(), "f1": BinaryF1Score()})
    k = len(names)
    # No compute groups: torchmetrics would have macro_f1 share the per-class F1's states, but Lightning
    # resets macro_f1 (a logged Metric object) and not the per-class F1 (computed by this module): apart,
    # each keeps its own, whatever resets them when.
    return MetricCollection({
        "acc": MulticlassAccuracy(num_classes=k, average="micro"),
        "macro_f1": MulticlassF1Score(num_classes=k, average="macro"),
        "f1": ClasswiseWrapper(MulticlassF1Score(num_classes=k, average=None), labels=list(names), prefix="f1_"),
    }, compute_groups=False)


def confusion_matrix(num_labels: int) -> Metric:
    """``BinaryConfusionMatrix`` (K = 2) or ``MulticlassConfusionMatrix(K)``, updated with ``preds (B,)``
    and ``labels (B,)``; ``compute()`` gives the counts ``(K, K)``, row = true class, column = predicted."""
    return BinaryConfusionMatrix() if num_labels == 2 else MulticlassConfusionMatrix(num_classes=num_labels)


def confusion_figure(confusion: Metric, counts: torch.Tensor, names: list[str], title: str) -> Figure:
    """``counts (K, K)`` drawn by torchmetrics' ``confusion.plot`` (class names on the axes, counts in
    the cells) on a matplotlib ``Figure`` with the Agg canvas: no display, and nothing left in pyplot's
    state (so nothing to close, and a user's own backend is left alone). Every text is drawn as written: a
    class name is data, so ``$``, ``$$`` (price ranges) or ``a_b`` are never read as mathtext markup (C35)."""
    from matplotlib import rc_context
    from matplotlib.text import Text

    side = min(12.0, 2.5 + 0.6 * len(names))  # inches: room for K names
    with rc_context({"text.parse_math": False, "text.usetex": False}):
        fig = Figure(figsize=(side, side), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        confusion.plot(counts.cpu(), ax=ax, labels=list(names))
        ax.set_title(title)
    for text in fig.findobj(Text):  # drawn later (add_figure renders it): each text keeps its own setting
        text.set_parse_math(False)
    return fig


def scatter_figure(true: torch.Tensor, predicted: torch.Tensor, title: str) -> Figure:
    """A regression's predicted values against the true ones ``(N,)`` each, with the line ``predicted = true``, on an
    Agg ``Figure`` (as ``confusion_figure``: nothing left in pyplot's state)."""
    from matplotlib import rc_context

    with rc_context({"text.parse_math": False}):
        fig = Figure(figsize=(5.0, 5.0), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.scatter(true.numpy(), predicted.numpy(), s=6, alpha=0.4)
        if len(true):
            low, high = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
            ax.plot([low, high], [low, high], color="grey", linewidth=1)
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
        ax.set_title(title)
    return fig
