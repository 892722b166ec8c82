"""Write predictions in input order: a GLUE submission file, or ``sentence, label, probability``."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import rank_zero_info

from lora_lightning.errors import OptionError, OutputExistsError


def _flatten(indices) -> list[int]:
    """Lightning's ``batch_indices`` (per dataloader, per batch) as one flat list."""
    if isinstance(indices, int):
        return [indices]
    return [i for item in (indices or []) for i in _flatten(item)]


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict``'s outputs to a TSV once the predict epoch ends, one row per input row or line, in
    input order.

    For GLUE's ``test.tsv`` (rows with an ``index``) it writes GLUE's submission format
    ``index<TAB>prediction`` (0/1); for any other ``--data.predict_file`` the text column(s), then what the
    problem type writes (``tasks``): ``label`` (the class name, ``id2label``) and ``probability`` (of that class),
    e.g. ``sentence<TAB>label<TAB>probability`` for SST-2; multi-label: ``labels`` (those at or above
    ``model.threshold``, joined by ``,``) and ``probability_<label>`` for each; regression: each target's value.

    Args:
        output_path: file to write; ``None`` writes ``predictions.tsv`` in the run's log folder.
            An existing file is never overwritten unless ``overwrite``.
        overwrite: replace an existing ``output_path``.

    Raises:
        OutputExistsError: ``output_path`` exists (checked before predicting).
    """

    def __init__(self, output_path: str | None = None, overwrite: bool = False) -> None:
        super().__init__(write_interval="epoch")
        self.output_path = output_path
        self.overwrite = overwrite

    def _path(self, trainer) -> Path:
        if self.output_path is not None:
            return Path(self.output_path)
        return Path(trainer.log_dir or ".") / "predictions.tsv"

    def on_predict_start(self, trainer, pl_module) -> None:
        path = self._path(trainer)
        if path.exists() and not self.overwrite:
            raise OutputExistsError(f"{path} exists: pick another output_path or set overwrite: true")

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        path = self._path(trainer)  # every rank: trainer.log_dir is a broadcast under DDP
        probs = torch.cat([p for p in predictions]).float().cpu()  # (N_rank, num_labels), in loader order
        order = torch.tensor(_flatten(batch_indices), dtype=torch.long)  # dataset index of each prediction
        if trainer.world_size > 1:  # each process predicted its share (C20): gather them on rank 0
            shares = [None] * trainer.world_size
            torch.distributed.all_gather_object(shares, (probs, order))
            if not trainer.is_global_zero:
                return
            probs = torch.cat([p for p, _ in shares])
            order = torch.cat([o for _, o in shares])
        total = len(trainer.datamodule.predict_rows())
        real = order < total  # a process without a row predicted a weight-0 copy (loaders.ShardedOrderSampler)
        probs, order = probs[real], order[real]
        if probs.shape[0] < total:  # only a batch limit leaves rows out
            raise OptionError(f"predicted {probs.shape[0]:,} of {total:,} rows (trainer.limit_predict_batches="
                              f"{trainer.limit_predict_batches}), and the prediction file has one line per input "
                              "row: to predict fewer rows, pass a shorter data.predict_file")
        if not torch.equal(order.sort().values, torch.arange(probs.shape[0])):
            raise RuntimeError(f"{probs.shape[0]} predictions do not map one-to-one onto the input rows")
        probs = torch.empty_like(probs).index_copy_(0, order, probs)  # back to input order
        rows = trainer.datamodule.predict_rows()
        if len(rows) != len(probs):
            raise RuntimeError(f"{len(probs)} predictions for {len(rows)} input rows")
        task = pl_module.task  # how a row's outputs become cells: label and probability, labels, or values
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
            if "index" in rows.column_names and task.submission:
                writer.writerow(["index", "prediction"])  # GLUE's submission format
                writer.writerows(zip(rows["index"], probs.argmax(-1).tolist()))
            else:
                texts = trainer.datamodule.text_columns  # the text (and pair) column names, e.g. sentence
                writer.writerow(task.prediction_header(texts))
                for *text, output in zip(*(rows[c] for c in texts), probs.tolist()):
                    writer.writerow([*text, *task.prediction_cells(output)])
        rank_zero_info(f"Wrote {len(probs)} predictions to {path}")


SST2PredictionWriter = PredictionWriter  # its earlier name, which runs saved before it was renamed use
