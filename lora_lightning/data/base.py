"""``TextClassificationDataModule``: labeled text files as a ``LightningDataModule`` (read, split,
tokenise, batch).

It takes the user's files (``tables``: TSV, CSV, JSON lines, Parquet; any number of classes; one text
or a pair per row); ``sst2.py`` holds its preset for SST-2, the default task. Files are read from their
bytes on every ``setup``; nothing is cached on disk under a path or a modification time, so a file
replaced in place (``cp -p``, ``rsync -a``, an archive) is read as it is now.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
from datasets import Dataset, Value
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader
from transformers import AutoConfig, DataCollatorWithPadding

from lora_lightning.data.limits import model_token_limit
from lora_lightning.data.samplers import EpochLengthGroupedSampler, SortedLengthBatchSampler
from lora_lightning.data.splits import duplicate_texts, group_split
from lora_lightning.errors import DataFileError, LoRALightningWarning, OptionError
from lora_lightning.hub import hub_error, load_tokenizer, resolve_model_path
from lora_lightning.loaders import ResumableDataLoader, ShardedOrderSampler
from lora_lightning.tables import (FORMATS, Table, check_columns, check_text, encode_labels, label_values, read_lines,
                                   read_table)


class TextClassificationDataModule(pl.LightningDataModule):
    """Labeled text files for sequence classification: one text (or a pair) and a label per row.

    Files are read by ``tables.read_table`` by extension (``.tsv``, ``.csv``, ``.jsonl``/``.json``,
    ``.parquet``; ``predict_file`` may also be a ``.txt`` of one text per line). Splits:

    - ``fit``: ``train_file``, and ``validation_file``, or, without one, a seeded ``val_fraction``
      split of ``train_file``: by ``group_column`` when given (rows that share its value stay on one
      side, ``splits.group_split``), else of single rows (``datasets``' ``train_test_split``);
    - ``test``: ``test_file`` (labeled);
    - ``predict``: ``predict_file`` (its labels, if any, are not read).

    Labels are integers or strings (``tables.label_values``). The classes are the train file's
    distinct labels, sorted (integers by value, strings by code point): class id ``i`` is the
    ``i``-th. ``num_labels`` and ``id2label`` (names: the labels as text) reach the model through
    LightningCLI's argument linking, are saved with its checkpoint and written into its exports.
    A validation or test label that the train file does not have is refused.

    Args:
        train_file: labeled training rows (required).
        validation_file: labeled validation rows; ``None``: ``val_fraction`` of ``train_file``.
        test_file: labeled rows for ``test``.
        predict_file: rows (or ``.txt`` lines) for ``predict``.
        text_column: the column with the text.
        text_pair_column: a second text column for sentence pairs (NLI, paraphrase): tokenised as
            ``[CLS] text [SEP] pair [SEP]``, ``token_type_ids`` 1 on the second segment.
        label_column: the column with the label.
        model_name_or_path: the model whose fast tokenizer is used (linked to the model's by the CLI).
        batch_size: training rows per optimizer step.
        eval_batch_size: rows per validation/test/predict batch.
        max_length: tokens per row at most (including [CLS] and [SEP]); longer are truncated.
        val_fraction: share of ``train_file`` held out as the val split when there is no
            ``validation_file``, in (0, 1).
        group_column: a column whose rows with one value stay together on one side of that val split
            (a review id, a user, a source document): the val split then holds no text whose source
            is in train. ``None``: rows are held out one by one. Values are compared as read.
        seed: seed of the train/val split and of the length-grouped shuffle.
        group_by_length: batch training rows of similar length (less padding).
        length_grouping: how (with ``group_by_length``): ``sorted``, batches of (nearly) one length
            in a new random order every epoch (``SortedLengthBatchSampler``: padding < 1.03x on SST-2),
            or ``megabatch``, transformers' grouping (``EpochLengthGroupedSampler``: sorted within
            mega-batches of 50 batches; ~1.09x).
        sort_eval_by_length: run val/test/predict batches sorted by length (predictions are
            written back in input order).
        max_train_samples: use only the first N rows of the train split (for quick runs), N >= 1.
        max_eval_samples: use only the first N rows of the val and test splits, N >= 1.
        num_workers: DataLoader worker processes (0: in the main process).

    Every option is checked before the first training step, so none fails deep inside a run:
    the ones that need no model or data when the module is built, the rest in ``setup``.

    Raises:
        OptionError: when built: ``val_fraction`` outside (0, 1), ``max_length`` < 2,
            ``batch_size`` or ``eval_batch_size`` < 1, ``max_train_samples`` or
            ``max_eval_samples`` < 1, ``num_workers`` < 0, ``seed`` outside [0, 2**32 - 1], two
            column options naming the same column. In ``setup``: see there.
        DataFileError: in ``setup`` (and when ``num_labels``/``id2label`` are first read): see
            ``tables``; a train file with a single class.
    """

    _no_predict_rows = "predict needs rows to predict: pass --data.predict_file (a .txt of lines, or a table)"
    LABELS: tuple | None = None  # a preset's fixed label values, in class-id order (None: the train file's)
    LABEL_NAMES: tuple | None = None  # their names (None: the values as text)

    def __init__(
        self,
        train_file: str,
        validation_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str = "label",
        model_name_or_path: str = "sentence-transformers/all-MiniLM-L6-v2",
        batch_size: int = 32,
        eval_batch_size: int = 128,
        max_length: int = 128,
        val_fraction: float = 0.1,
        group_column: str | None = None,
        seed: int = 42,
        group_by_length: bool = True,
        length_grouping: Literal["sorted", "megabatch"] = "sorted",
        sort_eval_by_length: bool = True,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not 0 < val_fraction < 1:
            raise OptionError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if max_length < 2:
            raise OptionError(f"data.max_length must be >= 2 tokens, got {max_length}")
        if batch_size < 1 or eval_batch_size < 1:
            raise OptionError(f"data.batch_size and data.eval_batch_size must be >= 1, got {batch_size}, {eval_batch_size}")
        for name, value in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
            if value is not None and value < 1:  # 0 would leave an empty loader: no val_acc for the checkpoint
                raise OptionError(f"data.{name} must be >= 1 (or null for all), got {value}")
        if num_workers < 0:
            raise OptionError(f"data.num_workers must be >= 0, got {num_workers}")
        if not 0 <= seed < 2**32:  # numpy's split refuses negative seeds; Lightning's seeds are uint32 too
            raise OptionError(f"data.seed must be in [0, 2**32 - 1], got {seed}")
        columns = {"data.text_column": text_column, "data.text_pair_column": text_pair_column,
                   "data.label_column": label_column, "data.group_column": group_column}
        given = [(k, v) for k, v in columns.items() if v is not None]
        if len({v for _, v in given}) < len(given):
            raise OptionError(f"{', '.join(f'{k}={v!r}' for k, v in given)}: each must name a different column")
        self.files = {"train": train_file, "val": validation_file, "test": test_file, "predict": predict_file}
        self.text_columns = [text_column] + ([text_pair_column] if text_pair_column else [])
        self.label_column = label_column
        self.group_column = group_column
        self.save_hyperparameters()
        self.tokenizer = None
        self.datasets: dict[str, Dataset] = {}
        self.predict_raw: Dataset | None = None
        self._train_table: Table | None = None
        self._label_values: list | None = None

    # --- labels: read from the train file once, linked to the model by the CLI -------------------
    def _train(self) -> Table:
        if self._train_table is None:
            self._train_table = read_table(self.files["train"], "data.train_file")
        return self._train_table

    @property
    def label_values(self) -> list[int | str]:
        """The label values in class-id order: ``LABELS``, or the train file's distinct labels, sorted.

        Raises:
            DataFileError: see ``tables``; a train file whose rows all have one label.
        """
        if self.LABELS is not None:
            return list(self.LABELS)
        if self._label_values is None:
            table = self._train()
            check_columns(table, {self.label_column: "data.label_column"})
            values = sorted(set(label_values(table, self.label_column)))
            if len(values) < 2:
                raise DataFileError(f"{table.path}: every row has the label {values[0]!r}: a classifier needs at "
                                    f"least 2 classes in data.train_file (column {self.label_column!r})")
            self._label_values = values
        return self._label_values

    @property
    def num_labels(self) -> int:
        """Number of classes ``K`` (linked to ``model.num_labels``)."""
        return len(self.label_values)

    @property
    def id2label(self) -> dict[int, str]:
        """Class id -> label name (linked to ``model.id2label``)."""
        names = self.LABEL_NAMES or [str(v) for v in self.label_values]
        return dict(enumerate(names))

    # --- reading -----------------------------------------------------------------------------------
    def _labeled(self, table: Table, group: bool = False) -> Dataset:
        """``table``'s text column(s) and its labels as class ids (``label``, int64), checked; with
        ``group``, also ``group_column``'s values as ``group`` (text; a missing value: its own group)."""
        needed = {c: o for c, o in zip(self.text_columns, ("data.text_column", "data.text_pair_column"))}
        if group:
            needed[self.group_column] = "data.group_column"
        check_columns(table, {**needed, self.label_column: "data.label_column"})
        for column in self.text_columns:
            check_text(table, column)
        values = label_values(table, self.label_column)
        label2id = {v: i for i, v in enumerate(self.label_values)}
        known = f"one of data.train_file's labels {self.label_values}"
        ids = encode_labels(table, values, label2id, known)
        texts = table.rows.select_columns(self.text_columns)
        if group:
            groups = [f"\0row {i}" if v is None else str(v) for i, v in enumerate(table.rows[self.group_column])]
            texts = texts.add_column("group", groups)
        return texts.add_column("label", ids).cast_column("label", Value("int64"))

    def _unlabeled(self, path: str) -> Dataset:
        """``predict_file``'s text column(s): a table by extension, else one text per line."""
        if Path(path).suffix.lower() not in FORMATS:
            lines = read_lines(path)
            if self.text_pair_column is not None:
                raise OptionError(f"data.predict_file: {path}: a text file of lines has no second text for "
                                  f"data.text_pair_column={self.text_pair_column!r}: use a .tsv/.csv/.jsonl/.parquet file")
            return lines.rename_column("text", self.text_columns[0]) if self.text_columns[0] != "text" else lines
        table = read_table(path, "data.predict_file")
        needed = {c: o for c, o in zip(self.text_columns, ("data.text_column", "data.text_pair_column"))}
        check_columns(table, needed)
        for column in self.text_columns:
            check_text(table, column)
        return table.rows.select_columns(self.text_columns)

    @property
    def text_pair_column(self) -> str | None:
        return self.text_columns[1] if len(self.text_columns) > 1 else None

    def load_raw(self) -> dict[str, Dataset]:
        """The splits that have files: ``train`` (and ``val``, ``test``), each with the text column(s)
        and ``label`` (class ids); ``predict`` is read in ``setup``."""
        raw = {"train": self._labeled(self._train(), group=self.group_column is not None)}
        for split, option in (("val", "data.validation_file"), ("test", "data.test_file")):
            if self.files[split] is not None:
                raw[split] = self._labeled(read_table(self.files[split], option))
        return raw

    def _train_source(self) -> str:
        return str(self._train().path)

    def prepare_data(self) -> None:
        """Download / cache the raw data and the tokenizer once (no state is set)."""
        self.load_raw()
        load_tokenizer(self.hparams.model_name_or_path)

    def setup(self, stage: str | None = None) -> None:
        """Load, split and tokenise; assigns ``self.datasets[name]`` for ``train``/``val``/``test``/``predict``.

        Lightning calls it before the first step of any stage, so the options that need the model
        or the data are refused here, at start.

        Raises:
            OptionError: ``max_length`` above ``model_token_limit``; a tokenizer with more tokens
                than the model's embedding table has rows; ``val_fraction`` leaving no train rows.
            DataFileError: see ``tables``.
            ModelNotFoundError: the model's tokenizer or config cannot be loaded.
        """
        if self.datasets:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.model_name_or_path)
        self._check_model_fits()
        parts = self.load_raw()
        if "val" not in parts:
            parts["train"], parts["val"] = self.split_val(parts["train"])
        self._warn_duplicates(parts)
        if self.files["predict"] is not None:
            parts["predict"] = self._unlabeled(self.files["predict"])
        if "predict" in parts:
            self.predict_raw = parts["predict"]
            self._warn_truncation(parts["predict"])
        if hp.max_train_samples is not None:
            parts["train"] = parts["train"].select(range(min(hp.max_train_samples, len(parts["train"]))))
        if hp.max_eval_samples is not None:
            evals = [k for k in ("val", "test") if k in parts]
            sizes = {k: len(parts[k]) for k in evals}
            for k in evals:
                parts[k] = parts[k].select(range(min(hp.max_eval_samples, len(parts[k]))))
            rank_zero_info(f"data.max_eval_samples={hp.max_eval_samples}: " +
                           ", ".join(f"{k} uses {len(parts[k]):,} of {sizes[k]:,} rows" for k in evals))
        self.datasets = {k: self._tokenize(ds) for k, ds in parts.items()}

    def split_val(self, train: Dataset) -> tuple[Dataset, Dataset]:
        """Hold out ``val_fraction`` of the train rows as val (there is no ``validation_file``), seeded by
        ``seed``: whole groups of ``group_column`` (``splits.group_split``), or single rows.

        Returns:
            ``(train, val)``.

        Raises:
            OptionError: ``val_fraction`` leaves no train rows; ``group_column`` has fewer than 2 values.
        """
        hp = self.hparams
        if self.group_column is None:
            try:
                split = train.train_test_split(test_size=hp.val_fraction, seed=hp.seed)
            except ValueError:  # datasets: "the resulting train set will be empty"
                raise OptionError(f"data.val_fraction={hp.val_fraction} leaves no train rows of the "
                                  f"{len(train)} in {self._train_source()}") from None
            return split["train"], split["test"]
        groups = train["group"]
        try:
            keep, held = group_split(groups, hp.val_fraction, hp.seed)
        except ValueError as error:
            raise OptionError(f"data.group_column={self.group_column!r}: {self._train_source()} has {error}") from None
        rank_zero_info(f"val split by data.group_column={self.group_column!r} (seed {hp.seed}): train {len(keep):,} rows "
                       f"of {len({groups[i] for i in keep}):,} groups, val {len(held):,} rows of "
                       f"{len({groups[i] for i in held}):,} groups, none in both")
        return train.select(keep), train.select(held)

    # splits whose rows are compared with train's for duplicate texts (a preset may check val its own way)
    duplicate_checked = ("val", "test")

    def _warn_duplicates(self, parts: dict[str, Dataset]) -> None:
        """One warning per split (``duplicate_checked``) that has rows whose text is also a train row's
        (``splits.duplicate_texts``: case and spacing ignored; for pairs, both texts), with the count
        and two examples: such rows score what was learnt by heart, not what generalises."""
        def texts(ds: Dataset) -> list[str]:
            return ["\t".join(row) for row in zip(*(ds[c] for c in self.text_columns))]

        train = texts(parts["train"])
        names = {"val": "validation_file" if self.files["val"] else "val split", "test": "test_file"}
        for split in self.duplicate_checked:
            if split not in parts:
                continue
            count, examples = duplicate_texts(train, texts(parts[split]))
            if count:
                hint = " or data.group_column to keep a source's rows together" if split == "val" and not self.files["val"] else ""
                rank_zero_warn(f"{count:,} of {len(parts[split]):,} {split} rows ({names[split]}) have a text that is also "
                               f"in train (case and spacing ignored), e.g. {examples}: their {split} score is memory, "
                               f"not generalisation; remove them{hint}", category=LoRALightningWarning)

    def _check_model_fits(self) -> None:
        """Refuse, before any data is read, options the model's config says it cannot run.

        ``max_length`` against ``model_token_limit`` (the position table, not only the tokenizer),
        and the tokenizer's size against the embedding table: either would fail only when a long
        sentence or a rare token reaches the model, mid-run.

        Raises:
            OptionError: as ``setup`` says.
            ModelNotFoundError: the config cannot be loaded.
        """
        name, tokenizer = self.hparams.model_name_or_path, self.tokenizer
        try:
            config = AutoConfig.from_pretrained(resolve_model_path(name))
        except OSError as error:
            raise hub_error(name, error) from None
        limit = model_token_limit(config, tokenizer)
        if limit is not None and self.hparams.max_length > limit:
            raise OptionError(f"data.max_length={self.hparams.max_length} exceeds the model's limit of {limit} tokens")
        vocab_size = getattr(config, "vocab_size", None)
        if isinstance(vocab_size, int) and len(tokenizer) > vocab_size:
            raise OptionError(f"model.model_name_or_path={name!r}: its tokenizer has {len(tokenizer)} tokens but the "
                              f"model's embedding table has {vocab_size} rows (a tokenizer from another model?)")

    def _warn_truncation(self, ds: Dataset) -> None:
        # verbose=False: no "longer than the specified maximum ... indexing errors" when we do truncate
        texts = [list(ds[c]) for c in self.text_columns]
        lengths = [len(ids) for ids in self.tokenizer(*texts, verbose=False)["input_ids"]]
        n = sum(length > self.hparams.max_length for length in lengths)
        if n:
            rank_zero_warn(f"{n} of {len(lengths)} predict rows are longer than max_length="
                           f"{self.hparams.max_length} tokens and are truncated", category=LoRALightningWarning)

    def predict_rows(self) -> Dataset:
        """The raw ``predict`` rows (the text column(s), and ``index`` for GLUE's test.tsv), in input order."""
        return self.predict_raw

    def _tokenize(self, ds: Dataset) -> Dataset:
        tok, max_length, columns = self.tokenizer, self.hparams.max_length, self.text_columns

        def encode(batch):  # a pair: [CLS] text [SEP] pair [SEP], token_type_ids 1 on the pair
            enc = tok(*(batch[c] for c in columns), truncation=True, max_length=max_length)
            enc["length"] = [len(ids) for ids in enc["input_ids"]]
            return enc

        ds = ds.map(encode, batched=True, desc="Tokenizing")
        if "label" in ds.column_names:
            ds = ds.rename_column("label", "labels")
        model_inputs = ("input_ids", "token_type_ids", "attention_mask", "labels", "length")
        return ds.remove_columns([c for c in ds.column_names if c not in model_inputs])

    def _world(self) -> tuple[int, int]:
        """``(world_size, global_rank)`` of the attached trainer; ``(1, 0)`` without one."""
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _train_batches_done(self) -> int:
        """Batches of the current training epoch that the optimizer has stepped on (0 at an epoch's
        end): the training loader's state. Counted from ``global_step``, which is exact even when a
        Ctrl-C lands between an optimizer step and Lightning's batch bookkeeping."""
        trainer = self.trainer
        n, accumulate = trainer.num_training_batches, trainer.accumulate_grad_batches
        if not isinstance(n, int) or n <= 0:
            return 0
        steps_per_epoch = -(-n // accumulate)
        steps_into_epoch = trainer.global_step - trainer.current_epoch * steps_per_epoch
        return min(max(steps_into_epoch * accumulate, 0), n) % n

    def _loader(self, name: str, train: bool = False) -> DataLoader:
        ds = self.datasets[name]
        hp = self.hparams
        collate = DataCollatorWithPadding(self.tokenizer, return_tensors="pt")
        features = ds.remove_columns("length")
        world_size, rank = self._world()
        if not train:
            # Longest first, similar lengths together: less padding. Metrics don't depend on order;
            # PredictionWriter puts predictions back in input order from Lightning's batch indices.
            order = sorted(range(len(ds)), key=ds["length"].__getitem__, reverse=True) if hp.sort_eval_by_length else None
            if world_size > 1:  # every sentence scored once across processes, none repeated
                order = ShardedOrderSampler(order if order is not None else range(len(ds)), world_size, rank)
            return DataLoader(features, batch_size=hp.eval_batch_size, sampler=order, collate_fn=collate,
                              num_workers=hp.num_workers)
        if hp.group_by_length:
            grouped = SortedLengthBatchSampler if hp.length_grouping == "sorted" else EpochLengthGroupedSampler
            sampler = grouped(hp.batch_size, list(ds["length"]), hp.seed)
            if world_size == 1 and getattr(self, "trainer", None) is not None:
                # resumable mid-epoch (Ctrl-C, val_check_interval); under DDP Lightning re-shards the sampler
                return ResumableDataLoader(features, sampler, hp.batch_size, self._train_batches_done,
                                           collate_fn=collate, num_workers=hp.num_workers)
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
            raise DataFileError(self._no_predict_rows)
        return self._loader("predict")
