"""SST-2 as a ``LightningDataModule``: load with ``datasets``, split, tokenise, batch.

Splits (GLUE, Wang et al. 2018; SST-2, Socher et al. 2013):

- ``fit``: GLUE's train set (67,349 sentences) split ``1 - val_fraction`` / ``val_fraction``
  with ``seed`` into train (60,614) and val (6,735);
- ``test``: GLUE's labeled dev set (872 sentences), the number papers report;
- ``predict``: GLUE's unlabeled test set (1,821 sentences).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from datasets import Dataset, DatasetDict, Features, Value, load_dataset
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding
from transformers.trainer_pt_utils import LengthGroupedSampler

from lora_lightning.errors import DataFileError, OptionError
from lora_lightning.hub import load_tokenizer

HUB_DATASET = ("nyu-mll/glue", "sst2")
FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}


class EpochLengthGroupedSampler(LengthGroupedSampler):
    """transformers' ``LengthGroupedSampler`` with a per-epoch seed.

    Shuffles indices, cuts them into mega-batches of ``50 * batch_size`` (fewer for small sets),
    sorts each by length, longest batch first (Trainer's ``group_by_length``). Lightning calls ``set_epoch`` before each epoch, so
    the order depends only on ``(seed, epoch)``: a resumed run sees the same batches.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)


def find_data_dir(data_dir: str | None) -> Path | None:
    """``data_dir`` if given, else ``$GLUE_DIR/SST-2`` if ``GLUE_DIR`` is set, else ``None`` (the Hub).

    Raises:
        DataFileError: the chosen folder does not exist.
    """
    if data_dir is None and os.environ.get("GLUE_DIR"):
        data_dir = os.path.join(os.environ["GLUE_DIR"], "SST-2")
        origin = "GLUE_DIR"
    else:
        origin = "data.data_dir"
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataFileError(f"{origin}: SST-2 folder {path} does not exist (expected train.tsv and dev.tsv in it)")
    if not (path / FILES["train"]).is_file() and (path / "SST-2" / FILES["train"]).is_file():
        raise DataFileError(f"{origin}: {path} holds SST-2/, not the files: pass {path / 'SST-2'}")
    return path


def split_lines(path: Path, data: bytes) -> list[str]:
    """UTF-8 (BOM allowed) ``data`` as lines without their LF or CRLF ends; the final newline ends
    the last line rather than starting an empty one.

    Raises:
        DataFileError: invalid UTF-8, naming ``path`` and the line.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataFileError(f"{path}, line {line}: not valid UTF-8 ({error.reason})") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def check_tsv(path: Path, labeled: bool) -> list[str]:
    """Validate a GLUE-format TSV before ``datasets`` reads it; return its column names.

    Checks, each with one error naming the file (and line): the file exists, is not empty, is
    UTF-8 (a BOM and CRLF line ends are accepted), has a header with ``sentence`` (and ``label``
    when ``labeled``) and at least one row, every row has as many tab-separated fields as the header, and every label
    is 0 or 1.

    Raises:
        DataFileError: the first problem found.
    """
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    data = path.read_bytes()
    if not data.strip():
        raise DataFileError(f"{path}: file is empty (expected a header row 'sentence<TAB>label')")
    lines = split_lines(path, data)
    header = lines[0].split("\t")
    need = ["sentence", "label"] if labeled else ["sentence"]
    missing = [c for c in need if c not in header]
    if missing:
        hint = " (GLUE's test.tsv has no labels: use `predict` for it; `test` uses the labeled dev.tsv)" \
            if labeled and "label" in missing and "sentence" in header else ""
        raise DataFileError(f"{path}, line 1: missing column(s) {missing} in header {header}{hint}")
    if len(lines) == 1:
        raise DataFileError(f"{path}: has a header but no rows")
    label_col = header.index("label") if labeled else None
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataFileError(f"{path}, line {number}: {len(fields)} tab-separated fields, expected {len(header)} {header}")
        if label_col is not None and fields[label_col].strip() not in ("0", "1"):
            raise DataFileError(f"{path}, line {number}: label {fields[label_col]!r} is not 0 or 1")
    return header


def read_split(path: Path, labeled: bool) -> Dataset:
    """Read one GLUE-format TSV with ``datasets``' csv builder after ``check_tsv``.

    Tab-separated, quoting off (a ``"`` is text), every field read as a string (no NA parsing:
    ``null``/``nan``/``NA``/``true`` stay text), UTF-8 with or without BOM, LF or CRLF.

    Returns:
        a ``Dataset`` with ``sentence`` (str) and, when ``labeled``, ``label`` (int 0/1); an
        unlabeled file keeps its ``index`` column if it has one.

    Raises:
        DataFileError: see ``check_tsv``.
    """
    header = check_tsv(path, labeled)
    ds = load_dataset(
        "csv",
        data_files=str(path),
        split="train",
        delimiter="\t",
        quoting=csv.QUOTE_NONE,
        keep_default_na=False,
        na_filter=False,
        encoding="utf-8-sig",
        features=Features({name: Value("string") for name in header}),
    )
    if labeled:
        ds = ds.map(lambda b: {"label": [int(v) for v in b["label"]]}, batched=True,
                    features=Features({**ds.features, "label": Value("int64")}))
    keep = ["sentence", "label"] if labeled else ["sentence"] + (["index"] if "index" in header else [])
    return ds.select_columns(keep)


def read_lines(path: Path) -> Dataset:
    """One sentence per line of a UTF-8 text file (trailing newline stripped, empty lines kept).

    Raises:
        DataFileError: the file is missing or not valid UTF-8 (with the line).
    """
    if not path.is_file():
        raise DataFileError(f"data.predict_file: {path}: file not found")
    return Dataset.from_dict({"sentence": split_lines(path, path.read_bytes())})


class SST2DataModule(pl.LightningDataModule):
    """SST-2 (binary sentiment) for sequence classification.

    Data source, first that applies: ``data_dir`` (a GLUE-format ``SST-2`` folder with
    ``train.tsv``, ``dev.tsv`` and optionally ``test.tsv``), ``$GLUE_DIR/SST-2``, the Hub's
    ``nyu-mll/glue`` (config ``sst2``).

    Args:
        model_name_or_path: the model whose fast tokenizer is used (linked to the model's by the CLI).
        data_dir: GLUE-format SST-2 folder; ``None`` for ``$GLUE_DIR/SST-2`` or the Hub.
        batch_size: training sentences per optimizer step.
        eval_batch_size: sentences per validation/test/predict batch.
        max_length: tokens per sentence at most (including [CLS] and [SEP]); longer are truncated.
        val_fraction: share of GLUE's train set held out as the val split, in (0, 1).
        seed: seed of the train/val split and of the length-grouped shuffle.
        group_by_length: batch training sentences of similar length (less padding).
        sort_eval_by_length: run val/test/predict batches sorted by length (predictions are
            written back in input order).
        max_train_samples: use only the first N sentences of the train split (for quick runs).
        max_eval_samples: use only the first N sentences of the val and test splits.
        predict_file: a UTF-8 text file of one sentence per line to ``predict`` on instead of
            GLUE's ``test.tsv``; every line (empty ones too) gets a prediction, in order.
        num_workers: DataLoader worker processes.

    Raises:
        OptionError: ``val_fraction`` outside (0, 1), ``max_length`` < 2 or above the model's
            limit, ``batch_size`` < 1.
        DataFileError: see ``read_split``.
    """

    def __init__(
        self,
        model_name_or_path: str = "sentence-transformers/all-MiniLM-L6-v2",
        data_dir: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        max_length: int = 128,
        val_fraction: float = 0.1,
        seed: int = 42,
        group_by_length: bool = True,
        sort_eval_by_length: bool = True,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        predict_file: str | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not 0 < val_fraction < 1:
            raise OptionError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if max_length < 2:
            raise OptionError(f"data.max_length must be >= 2 tokens, got {max_length}")
        if batch_size < 1 or eval_batch_size < 1:
            raise OptionError(f"data.batch_size and data.eval_batch_size must be >= 1, got {batch_size}, {eval_batch_size}")
        self.save_hyperparameters()
        self.tokenizer = None
        self.datasets: dict[str, Dataset] = {}
        self.predict_raw: Dataset | None = None

    def load_raw(self) -> DatasetDict:
        """GLUE's SST-2 as ``train`` / ``validation`` (/ ``test``) with ``sentence`` and ``label``."""
        path = find_data_dir(self.hparams.data_dir)
        if path is None:
            try:
                raw = load_dataset(*HUB_DATASET)  # columns sentence, label, idx; the test labels are all -1
            except Exception as error:  # offline, no access: datasets raises ConnectionError, FileNotFoundError, ...
                raise DataFileError(
                    f"SST-2: no data.data_dir and no GLUE_DIR, and the Hub's {HUB_DATASET[0]} ({HUB_DATASET[1]}) "
                    f"could not be loaded ({type(error).__name__}). Set GLUE_DIR to the folder holding SST-2/ "
                    f"(e.g. export GLUE_DIR=../shared/data/glue) or pass --data.data_dir"
                ) from None
            return DatasetDict({
                "train": raw["train"].remove_columns("idx"),
                "validation": raw["validation"].remove_columns("idx"),
                "test": raw["test"].remove_columns("label").rename_column("idx", "index"),
            })
        splits = {"train": read_split(path / FILES["train"], True), "validation": read_split(path / FILES["validation"], True)}
        if (path / FILES["test"]).is_file():
            splits["test"] = read_split(path / FILES["test"], False)
        return DatasetDict(splits)

    def prepare_data(self) -> None:
        """Download / cache the raw data and the tokenizer once (no state is set)."""
        self.load_raw()
        load_tokenizer(self.hparams.model_name_or_path)

    def setup(self, stage: str | None = None) -> None:
        """Load, split and tokenise; assigns ``self.datasets[name]`` for ``train``/``val``/``test``/``predict``."""
        if self.datasets:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.model_name_or_path)
        model_max = getattr(self.tokenizer, "model_max_length", None)
        if model_max is not None and model_max < 10**6 and hp.max_length > model_max:
            raise OptionError(f"data.max_length={hp.max_length} exceeds the model's limit of {model_max} tokens")
        raw = self.load_raw()
        split = raw["train"].train_test_split(test_size=hp.val_fraction, seed=hp.seed)
        parts = {"train": split["train"], "val": split["test"], "test": raw["validation"]}
        if hp.predict_file is not None:
            parts["predict"] = read_lines(Path(hp.predict_file))
        elif "test" in raw:
            parts["predict"] = raw["test"]
        if "predict" in parts:
            self.predict_raw = parts["predict"]
            self._warn_truncation(parts["predict"])
        if hp.max_train_samples is not None:
            parts["train"] = parts["train"].select(range(min(hp.max_train_samples, len(parts["train"]))))
        if hp.max_eval_samples is not None:
            for k in ("val", "test"):
                parts[k] = parts[k].select(range(min(hp.max_eval_samples, len(parts[k]))))
        self.datasets = {k: self._tokenize(ds) for k, ds in parts.items()}

    def _warn_truncation(self, ds: Dataset) -> None:
        lengths = [len(ids) for ids in self.tokenizer(list(ds["sentence"]))["input_ids"]]
        n = sum(length > self.hparams.max_length for length in lengths)
        if n:
            rank_zero_warn(f"{n} of {len(lengths)} predict sentences are longer than max_length="
                           f"{self.hparams.max_length} tokens and are truncated")

    def predict_rows(self) -> Dataset:
        """The raw ``predict`` rows (``sentence``, and ``index`` for GLUE's test.tsv), in input order."""
        return self.predict_raw

    def _tokenize(self, ds: Dataset) -> Dataset:
        tok, max_length = self.tokenizer, self.hparams.max_length

        def encode(batch):
            enc = tok(batch["sentence"], truncation=True, max_length=max_length)
            enc["length"] = [len(ids) for ids in enc["input_ids"]]
            return enc

        ds = ds.map(encode, batched=True, desc="Tokenizing")
        if "label" in ds.column_names:
            ds = ds.rename_column("label", "labels")
        model_inputs = ("input_ids", "token_type_ids", "attention_mask", "labels", "length")
        return ds.remove_columns([c for c in ds.column_names if c not in model_inputs])

    def _loader(self, name: str, train: bool = False) -> DataLoader:
        ds = self.datasets[name]
        hp = self.hparams
        collate = DataCollatorWithPadding(self.tokenizer, return_tensors="pt")
        features = ds.remove_columns("length")
        if not train:
            # Longest first, similar lengths together: less padding. Metrics don't depend on order;
            # SST2PredictionWriter puts predictions back in input order from Lightning's batch indices.
            order = sorted(range(len(ds)), key=ds["length"].__getitem__, reverse=True) if hp.sort_eval_by_length else None
            return DataLoader(features, batch_size=hp.eval_batch_size, sampler=order, collate_fn=collate,
                              num_workers=hp.num_workers)
        if hp.group_by_length:
            sampler = EpochLengthGroupedSampler(hp.batch_size, list(ds["length"]), hp.seed)
            return DataLoader(features, batch_size=hp.batch_size, sampler=sampler, collate_fn=collate, num_workers=hp.num_workers)
        return DataLoader(features, batch_size=hp.batch_size, shuffle=True, collate_fn=collate, num_workers=hp.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        if "predict" not in self.datasets:
            raise DataFileError("predict needs GLUE's test.tsv in the SST-2 folder, which was not found")
        return self._loader("predict")
