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
from datasets import Dataset, concatenate_datasets
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader
from transformers import AutoConfig, DataCollatorWithPadding

from lora_lightning.data.limits import model_token_limit
from lora_lightning.data.samplers import EpochLengthGroupedSampler, SortedLengthBatchSampler
from lora_lightning.data.splits import duplicate_texts, group_split, linked_groups, stratified_split
from lora_lightning.errors import DataFileError, LoRALightningWarning, OptionError, option, prefix
from lora_lightning.hub import hub_error, load_tokenizer, resolve_model_path
from lora_lightning.loaders import ResumableDataLoader, ShardedOrderSampler
from lora_lightning.tables import FORMATS, Table, check_columns, check_text, read_lines, read_table
from lora_lightning.data.options import check_options, plain_options
from lora_lightning.tasks import LabelSpec, ProblemType, get_task


class TextClassificationDataModule(pl.LightningDataModule):
    """Labeled text files for sequence classification: one text (or a pair) and a label per row.

    Files are read by ``tables.read_table`` by extension (``.tsv``, ``.csv``, ``.jsonl``/``.json``,
    ``.parquet``; ``predict_file`` may also be a ``.txt`` of one text per line). Each stage reads only
    the files it uses:

    - ``fit``: ``train_file``, and ``validation_file``, or, without one, a seeded ``val_fraction``
      split of ``train_file``: by ``group_column`` when given (rows that share its value stay on one
      side, ``splits.group_split``), else of single rows (``datasets``' ``train_test_split``); also
      ``test_file`` when given, to warn of texts it shares with train (``splits.duplicate_texts``);
    - ``validate``: ``validation_file`` (or the split of ``train_file``);
    - ``test``: ``test_file`` (labeled);
    - ``predict``: ``predict_file`` (its labels, if any, are not read).

    Labels are integers or strings (``tables.label_values``; compared as text across files, so a CSV
    ``0`` and a JSON ``"0"`` are one class, ``01`` and ``1`` are two). The classes are ``labels`` when
    given (``validate``/``test``/``predict`` with ``--ckpt_path`` take them from the checkpoint), else the
    train file's distinct labels, sorted (integers by value, strings by code point): class id ``i`` is the
    ``i``-th. ``num_labels`` and ``id2label`` (names: the labels as text) reach the model through
    LightningCLI's argument linking (from Python: pass them to ``LoRAClassifier``, which checks them at
    fit start), are saved with its checkpoint and written into its exports. A validation or test label
    outside the classes is refused.

    Every stage says in one warning how many rows ``max_length`` cuts, with the median and 95th
    percentile of the rows' lengths in tokens.

    Args:
        train_file: labeled training rows (needed by ``fit``, and by ``validate`` without a
            ``validation_file``).
        validation_file: labeled validation rows; ``None``: ``val_fraction`` of ``train_file``.
        test_file: labeled rows for ``test``.
        predict_file: rows (or ``.txt`` lines) for ``predict``.
        text_column: the column with the text.
        text_pair_column: a second text column for sentence pairs (NLI, paraphrase): tokenised as
            ``[CLS] text [SEP] pair [SEP]``, ``token_type_ids`` 1 on the second segment.
        label_column: the column with the label: a class, a list of classes (multi-label: ``0,4`` split by
            ``label_delimiter``, or a JSON / Parquet list), or a number (regression).
        labels: the classes' names in class-id order; ``None``: the train file's labels, sorted.
        problem_type: ``single_label_classification`` (one class per row), ``multi_label_classification`` (any
            number of labels per row, none too) or ``regression`` (numeric targets), as transformers names them;
            linked to the model's (``tasks``).
        label_delimiter: what separates the labels of one multi-label cell (``,``: ``0,4``).
        label_columns: one column per label (multi-label, each 0/1) or per target (regression), instead of
            ``label_column``; the outputs are named by the columns.
        label_names: the names of classes ``0..K-1`` when the files hold the ids (GoEmotions' ``0,4``): a list,
            or a ``.txt`` file of one name per line.
        column_names: for TSV / CSV files without a header row: the names of their columns, by position
            (``[text, labels, id]``); every line is then a row.
        model_name_or_path: the model whose fast tokenizer is used (linked to the model's by the CLI).
        batch_size: training rows per optimizer step.
        eval_batch_size: rows per validation/test/predict batch.
        max_length: tokens per row at most (including [CLS] and [SEP]); longer are truncated.
        val_fraction: share of ``train_file`` held out as the val split when there is no
            ``validation_file``, in (0, 1).
        group_column: a column whose rows with one value stay together on one side of that val split
            (a review id, a user, a source document): the val split then holds no text whose source
            is in train. ``None``: rows are held out one by one, stratified by label. Values are compared as
            text; a row without one is a group of its own. Several columns (``[sentence1, sentence2]``): rows
            sharing a value in any of them are one group (``splits.linked_groups``).
        tsv_quoting: how ``.tsv`` files are quoted: ``auto`` (the one reading the file allows; asks for
            this option where both do and differ), ``none`` (GLUE's: a ``"`` is text) or ``csv`` (pandas,
            Python's excel-tab and spreadsheets: a field in ``"`` may hold tabs and line breaks).
        seed: seed of the train/val split and of the length-grouped shuffle.
        group_by_length: batch training rows of similar length (less padding).
        length_grouping: how (with ``group_by_length``): ``sorted``, batches of (nearly) one length
            in a new random order every epoch (``SortedLengthBatchSampler``: padding < 1.03x on SST-2),
            or ``megabatch``, transformers' grouping (``EpochLengthGroupedSampler``: sorted within
            mega-batches of 50 batches; ~1.09x).
        sort_eval_by_length: run val/test batches longest first (less padding; metrics don't depend on
            order). ``predict`` runs in file order, so ``trainer.predict`` returns rows in input order. With
            ``trainer.limit_val_batches`` / ``limit_test_batches`` below the whole set, the batches scored are
            the first rows in file order, sorted among themselves.
        max_train_samples: use only the first N rows of the train split (for quick runs), N >= 1.
        max_eval_samples: use only the first N rows of the val and test splits, N >= 1.
        num_workers: DataLoader worker processes (0: in the main process).

    Every option is checked before the first training step, so none fails deep inside a run:
    the ones that need no model or data when the module is built, the rest in ``setup``. Paths may be
    ``str`` or ``pathlib.Path``, numbers Python's or numpy's: they are kept as plain values.

    Raises:
        OptionError: when built: ``val_fraction`` outside (0, 1), ``max_length`` < 2,
            ``batch_size`` or ``eval_batch_size`` < 1, ``max_train_samples`` or
            ``max_eval_samples`` < 1, ``num_workers`` < 0, ``seed`` outside [0, 2**32 - 1], two
            column options naming the same column, a value of the wrong type. In ``setup``: see there.
        DataFileError: in ``setup`` (and when ``num_labels``/``id2label`` are first read): see
            ``tables``; a train file with a single class; a stage's file not given.
    """

    _no_predict_rows = "predict needs rows to predict: pass --data.predict_file (a .txt of lines, or a table)"
    LABELS: tuple | None = None  # a preset's fixed label values, in class-id order (None: the train file's)
    LABEL_NAMES: tuple | None = None  # their names (None: the values as text)
    FILE_OPTIONS = {"train": "train_file", "val": "validation_file", "test": "test_file", "predict": "predict_file"}

    def __init__(
        self,
        train_file: str | None = None,
        validation_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        text_column: str = "text",
        text_pair_column: str | None = None,
        label_column: str = "label",
        labels: list[str] | None = None,
        problem_type: ProblemType = "single_label_classification",
        label_delimiter: str = ",",
        label_columns: list[str] | None = None,
        label_names: list[str] | str | None = None,
        column_names: list[str] | None = None,
        model_name_or_path: str = "sentence-transformers/all-MiniLM-L6-v2",
        batch_size: int = 32,
        eval_batch_size: int = 128,
        max_length: int = 128,
        val_fraction: float = 0.1,
        group_column: str | list[str] | None = None,
        tsv_quoting: Literal["auto", "none", "csv"] = "auto",
        seed: int = 42,
        group_by_length: bool = True,
        length_grouping: Literal["sorted", "megabatch"] = "sorted",
        sort_eval_by_length: bool = True,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        given = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        # plain values (a Path, a numpy number): what save_hyperparameters stores must load with weights_only (C22)
        o = plain_options(**given)
        check_options(o)
        self.files = {"train": o["train_file"], "val": o["validation_file"], "test": o["test_file"],
                      "predict": o["predict_file"]}
        self.text_columns = [o["text_column"]] + ([o["text_pair_column"]] if o["text_pair_column"] else [])
        self.label_column = o["label_column"]
        self.group_column = o["group_column"]
        self.save_hyperparameters(o)
        self.tokenizer = None
        self.datasets: dict[str, Dataset] = {}
        self.predict_raw: Dataset | None = None
        self._train_table: Table | None = None
        self._label_values: list | None = None

    # --- labels: given, or read from the train file once; linked to the model by the CLI ----------
    def _read(self, split: str) -> Table:
        """The table of ``split``'s file (``train``/``val``/``test``/``predict``), read as ``tsv_quoting`` and
        ``column_names`` say; what reading changed is said (``Table.notes``)."""
        name = self.FILE_OPTIONS[split]
        table = read_table(self.files[split], option("data", name), self.hparams.get("tsv_quoting", "auto"),
                           self.hparams.get("column_names"))
        for note in table.notes:
            rank_zero_warn(note, category=LoRALightningWarning)
        return table

    def _train(self) -> Table:
        if self._train_table is None:
            if self.files["train"] is None:
                raise DataFileError(f"{option('data', 'train_file')} is not set: fit (and the val split) read the labeled "
                                    "rows from it")
            self._train_table = self._read("train")
        return self._train_table

    @property
    def problem_type(self) -> str:
        """``single_label_classification``, ``multi_label_classification`` or ``regression`` (linked to the model's)."""
        return self.hparams.get("problem_type") or "single_label_classification"

    @property
    def task(self):
        """The problem type's ``tasks.Task`` class: how label cells are read and encoded."""
        return get_task(self.problem_type, "data")

    @property
    def label_spec(self) -> LabelSpec:
        hp = self.hparams
        return LabelSpec(self.label_column, hp.get("label_columns"), hp.get("label_delimiter") or ",", hp.get("labels"),
                         hp.get("label_names"))

    @property
    def label_values(self) -> list[int | str]:
        """The classes (or regression targets) in id order: ``LABELS`` (a preset's), ``labels``, ``label_names``' ids,
        ``label_columns``, or the train file's distinct labels, sorted (integers by value, text by code point): see
        the problem type's ``Task.label_values``.

        Raises:
            DataFileError: see ``tables``; a train file whose rows all have one label; no ``labels`` and
                no ``train_file``.
        """
        if self.LABELS is not None:
            return list(self.LABELS)
        if self._label_values is None:
            self._label_values = self.task.label_values(self._train, self.label_spec)
        return self._label_values

    @property
    def num_labels(self) -> int:
        """Number of outputs ``K``: classes, labels or targets (linked to ``model.num_labels``)."""
        return len(self.label_values)

    @property
    def id2label(self) -> dict[int, str]:
        """Output id -> name (linked to ``model.id2label``): ``label_names``, a preset's, or the values as text."""
        names = self.LABEL_NAMES or self.hparams.get("label_names") or [str(v) for v in self.label_values]
        return dict(enumerate(names))

    def label_counts(self) -> tuple[list[int], int]:
        """``(count per output, rows)`` of the train split's targets (after the val split and ``max_train_samples``):
        what ``model.class_weights=balanced`` is computed from; the whole train file's before ``setup('fit')``."""
        labels = self.datasets["train"]["labels"] if "train" in self.datasets else self.load_raw(("train",))["train"]["label"]
        return self.task.counts(list(labels), self.num_labels)

    # --- reading -----------------------------------------------------------------------------------
    def _labeled(self, table: Table, group: bool = False) -> Dataset:
        """``table``'s text column(s) and its targets (``label``: class ids, or float vectors for multi-label and
        regression), checked; with ``group``, also the ``group_column`` groups as ``group`` (``splits.linked_groups``:
        rows sharing a value of any group column are one group; a missing value: no link)."""
        needed = {c: option("data", o) for c, o in zip(self.text_columns, ("text_column", "text_pair_column"))}
        group_columns = ([self.group_column] if isinstance(self.group_column, str) else list(self.group_column or []))
        if group:
            needed.update({c: option("data", "group_column") for c in group_columns})
        check_columns(table, needed)
        spec, task = self.label_spec, self.task
        task.check_columns(table, spec)
        for column in self.text_columns:
            check_text(table, column)
        given = "labels" if spec.labels is not None else "label_names" if spec.label_names is not None else None
        known = (f"one of the classes {option('data', given)}={self.label_values} (with --ckpt_path: the checkpoint's)"
                 if given else f"one of {option('data', 'train_file')}'s labels {self.label_values}")
        targets = task.encode(table, spec, self.label_values, known)
        texts = table.dataset(self.text_columns)
        if group:
            texts = texts.add_column("group", linked_groups([table[c] for c in group_columns]))
        return texts.add_column("label", targets).cast_column("label", task.feature(self.num_labels))

    def _unlabeled(self) -> Dataset:
        """``predict_file``'s text column(s): a table by extension, else one text per line."""
        path = self.files["predict"]
        if Path(path).suffix.lower() not in FORMATS:
            lines = read_lines(path, option("data", "predict_file"))
            if self.text_pair_column is not None:
                raise OptionError(f"{option('data', 'predict_file')}: {path}: a text file of lines has no second text for "
                                  f"{option('data', 'text_pair_column')}={self.text_pair_column!r}: use a "
                                  ".tsv/.csv/.jsonl/.parquet file")
            return lines.rename_column("text", self.text_columns[0]) if self.text_columns[0] != "text" else lines
        table = self._read("predict")
        check_columns(table, {c: option("data", o) for c, o in zip(self.text_columns, ("text_column", "text_pair_column"))})
        for column in self.text_columns:
            check_text(table, column)
        return table.dataset(self.text_columns)

    @property
    def text_pair_column(self) -> str | None:
        return self.text_columns[1] if len(self.text_columns) > 1 else None

    def load_raw(self, splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, Dataset]:
        """The labeled splits of ``splits`` that have a file, each with the text column(s) and ``label``
        (class ids): ``train`` (always: fit needs it), ``val``, ``test``."""
        raw = {}
        for split in splits:
            if split == "train":
                raw["train"] = self._labeled(self._train(), group=self.group_column is not None)
            elif self.files[split] is not None:
                raw[split] = self._labeled(self._read(split))
        return raw

    def read_predict(self) -> Dataset | None:
        """The ``predict`` rows (``predict_file``), or ``None`` without one."""
        return self._unlabeled() if self.files["predict"] is not None else None

    def _train_source(self) -> str:
        return str(self._train().path)

    def prepare_data(self) -> None:
        """Download / cache what the data needs once (no state is set): the tokenizer (the files are local)."""
        load_tokenizer(self.hparams.model_name_or_path)

    # what each stage reads, by split
    STAGE_SPLITS = {"fit": ("train", "val", "test"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}

    def setup(self, stage: str | None = None) -> None:
        """Read, split and tokenise what ``stage`` uses (``STAGE_SPLITS``; the splits already set up are
        kept); assigns ``self.datasets[name]`` for ``train``/``val``/``test``/``predict``.

        Lightning calls it before the first step of any stage, so the options that need the model
        or the data are refused here, at start.

        Raises:
            OptionError: ``max_length`` above ``model_token_limit``; a tokenizer with more tokens
                than the model's embedding table has rows; ``val_fraction`` leaving no train rows.
            DataFileError: see ``tables``; ``train_file`` not set where the stage needs it.
            ModelNotFoundError: the model's tokenizer or config cannot be loaded.
        """
        stage = stage or "fit"
        wanted = [s for s in self.STAGE_SPLITS.get(stage, ("train", "val", "test")) if s not in self.datasets]
        if not wanted:
            return
        hp = self.hparams
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(hp.model_name_or_path)
            self._check_model_fits()
        labeled = [s for s in wanted if s != "predict"]
        if "val" in labeled and self.files["val"] is None and "train" not in labeled:
            labeled.insert(0, "train")  # the val split is cut from the train file
        parts = self.load_raw(tuple(labeled)) if labeled else {}
        if "val" in wanted and "val" not in parts:
            parts["train"], parts["val"] = self.split_val(parts["train"])
        if stage == "fit" and "train" in parts:  # a second fit with the splits set up already reads nothing new
            self._warn_duplicates(parts)
        else:
            parts.pop("train", None)
        if "predict" in wanted:
            predict = self.read_predict()
            if predict is not None:
                parts["predict"] = self.predict_raw = predict
        if hp.max_train_samples is not None and "train" in parts:
            parts["train"] = parts["train"].select(range(min(hp.max_train_samples, len(parts["train"]))))
        evals = [k for k in ("val", "test") if k in parts]
        if hp.max_eval_samples is not None and evals:
            sizes = {k: len(parts[k]) for k in evals}
            for k in evals:
                parts[k] = parts[k].select(range(min(hp.max_eval_samples, len(parts[k]))))
            rank_zero_info(f"{option('data', 'max_eval_samples')}={hp.max_eval_samples}: " +
                           ", ".join(f"{k} uses {len(parts[k]):,} of {sizes[k]:,} rows" for k in evals))
        tokenized = {k: self._tokenize(ds) for k, ds in parts.items()}
        self._warn_truncation(tokenized)
        self.datasets.update(tokenized)

    def split_val(self, train: Dataset) -> tuple[Dataset, Dataset]:
        """Hold out ``val_fraction`` of the train rows as val (there is no ``validation_file``), seeded by
        ``seed``: whole groups of ``group_column`` (``splits.group_split``), or rows stratified by label
        (``splits.stratified_split``: every class in val in proportion and in train, a rare one too).

        Returns:
            ``(train, val)``.

        Raises:
            OptionError: ``val_fraction`` leaves no train rows; ``group_column`` has fewer than 2 values.
        """
        hp = self.hparams
        if self.group_column is None:
            try:
                keep, held = stratified_split(self.task.strata(train["label"]), hp.val_fraction, hp.seed)
            except ValueError as error:
                raise OptionError(f"{option('data', 'val_fraction')}={hp.val_fraction}: {self._train_source()} has "
                                  f"{error}") from None
            return train.select(keep), train.select(held)
        groups = train["group"]
        try:
            keep, held = group_split(groups, hp.val_fraction, hp.seed)
        except ValueError as error:
            raise OptionError(f"{option('data', 'group_column')}={self.group_column!r}: {self._train_source()} "
                              f"has {error}") from None
        rank_zero_info(f"val split by {option('data', 'group_column')}={self.group_column!r} (seed {hp.seed}): train "
                       f"{len(keep):,} rows of {len({groups[i] for i in keep}):,} groups, val {len(held):,} rows of "
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
        names = {"val": option("data", "validation_file") if self.files["val"] else "the val split",
                 "test": option("data", "test_file")}
        for split in self.duplicate_checked:
            if split not in parts:
                continue
            count, examples = duplicate_texts(train, texts(parts[split]))
            if count:
                hint = (f" or set {option('data', 'group_column')} to keep a source's rows together"
                        if split == "val" and not self.files["val"] else "")
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
            raise OptionError(f"{option('data', 'max_length')}={self.hparams.max_length} exceeds the model's limit of "
                              f"{limit} tokens")
        vocab_size = getattr(config, "vocab_size", None)
        if isinstance(vocab_size, int) and len(tokenizer) > vocab_size:
            raise OptionError(f"{option('model', 'model_name_or_path')}={name!r}: its tokenizer has {len(tokenizer)} "
                              f"tokens but the model's embedding table has {vocab_size} rows (a tokenizer from another model?)")

    def _warn_truncation(self, parts: dict[str, Dataset]) -> None:
        """One warning when ``max_length`` cuts rows of the splits just tokenised: how many per split, and the
        median and 95th percentile of the rows' lengths in tokens (before the cut)."""
        max_length = self.hparams.max_length
        cut = {k: sum(n > max_length for n in ds["full_length"]) for k, ds in parts.items()}
        if not any(cut.values()):
            return
        lengths = sorted(n for ds in parts.values() for n in ds["full_length"])
        median, p95 = lengths[len(lengths) // 2], lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))]
        counts = ", ".join(f"{c:,} of {len(parts[k]):,} {k} rows ({c / len(parts[k]):.0%})" for k, c in cut.items() if c)
        rank_zero_warn(f"{option('data', 'max_length')}={max_length} tokens cuts {counts}; tokens per row: median {median}, "
                       f"95th percentile {p95}: a larger max_length keeps more of each text (attention costs grow with "
                       f"its square)", category=LoRALightningWarning)

    def predict_rows(self) -> Dataset:
        """The raw ``predict`` rows (the text column(s), and ``index`` for GLUE's test.tsv), in input order."""
        return self.predict_raw

    def _tokenize(self, ds: Dataset) -> Dataset:
        tok, max_length, columns = self.tokenizer, self.hparams.max_length, self.text_columns

        def encode(batch):  # a pair: [CLS] text [SEP] pair [SEP], token_type_ids 1 on the pair
            texts = [batch[c] for c in columns]
            # verbose=False: no "longer than the specified maximum ... indexing errors": we truncate below
            full = [len(ids) for ids in tok(*texts, verbose=False)["input_ids"]]
            enc = tok(*texts, truncation=True, max_length=max_length)
            enc["length"] = [len(ids) for ids in enc["input_ids"]]
            enc["full_length"] = full
            return enc

        ds = ds.map(encode, batched=True, desc="Tokenizing")
        if "label" in ds.column_names:
            ds = ds.rename_column("label", "labels")
        model_inputs = ("input_ids", "token_type_ids", "attention_mask", "labels", "length", "full_length")
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

    def eval_order(self, name: str) -> list[int] | None:
        """The order in which ``val``/``test`` rows are scored: longest first (``sort_eval_by_length``: less padding;
        metrics don't depend on order), or ``None`` for file order. ``predict`` is always in file order, so
        ``trainer.predict`` returns rows in the order of ``predict_file``.

        With ``trainer.limit_val_batches`` / ``limit_test_batches`` below the whole set, the rows Lightning will score
        come first and are the first rows in file order (sorted by length among themselves), so that a partial
        evaluation is a sample like the set, not its longest rows (C24); said in one line.
        """
        ds, hp = self.datasets[name], self.hparams
        if name == "predict":
            return None
        lengths = ds["length"]
        longest_first = lambda rows: sorted(rows, key=lengths.__getitem__, reverse=True)  # noqa: E731
        scored = self._rows_scored(name, len(ds))
        if scored < len(ds):
            stage = {"val": "validation", "test": "test"}[name]
            rank_zero_info(f"trainer.limit_{'val' if name == 'val' else 'test'}_batches: the {stage} scores the first "
                           f"{scored:,} of {len(ds):,} {name} rows in file order ({option('data', 'max_eval_samples')} "
                           "does the same for every run)")
            head = list(range(scored))
            tail = list(range(scored, len(ds)))
            return (longest_first(head) + longest_first(tail)) if hp.sort_eval_by_length else head + tail
        return longest_first(range(len(ds))) if hp.sort_eval_by_length else None

    def _rows_scored(self, name: str, n: int) -> int:
        """How many of ``n`` rows Lightning's ``limit_{val,test}_batches`` lets it score (all without a trainer)."""
        trainer = getattr(self, "trainer", None)
        limit = getattr(trainer, f"limit_{'val' if name == 'val' else 'test'}_batches", 1.0) if trainer else 1.0
        world_size, _ = self._world()
        per_rank = -(-n // world_size)
        batches = -(-per_rank // self.hparams.eval_batch_size)
        if isinstance(limit, int):
            taken = min(limit, batches)
        elif limit >= 1.0:
            return n
        else:
            taken = max(int(batches * limit), 1) if limit > 0 else 0
        return min(n, taken * self.hparams.eval_batch_size * world_size)

    def _loader(self, name: str, train: bool = False) -> DataLoader:
        if name not in self.datasets:
            stage = {"train": "fit", "val": "validate", "test": "test", "predict": "predict"}[name]
            if self.tokenizer is None:
                raise DataFileError(f"the data module is not set up: call setup({stage!r}) (or let a Trainer do it) "
                                    f"before {name}_dataloader()")
            if name == "test":
                dashes = "--" if prefix("data") else ""  # a flag on the command line, an argument from Python
                raise DataFileError(f"test needs labeled rows: pass {dashes}{option('data', 'test_file')}")
        ds = self.datasets[name]
        hp = self.hparams
        # On CUDA: lengths padded to a multiple of 8 (Tensor Core shapes, and few distinct shapes for compiled /
        # CUDA-graph steps) and pinned host memory (Lightning then copies batches without blocking). CPU: as is.
        cuda = self._on_cuda()
        collate = DataCollatorWithPadding(self.tokenizer, return_tensors="pt", pad_to_multiple_of=8 if cuda else None)
        features = ds.remove_columns(["length", "full_length"])
        world_size, rank = self._world()
        loader_kw = {"collate_fn": collate, "num_workers": hp.num_workers, "pin_memory": cuda}
        if not train:
            # PredictionWriter puts predictions back in input order from Lightning's batch indices.
            order = self.eval_order(name)
            if world_size > 1:  # every sentence scored once across processes, none repeated
                pad = None
                if len(ds) < world_size:  # a process without a row gets a copy of row 0 of weight 0 (C37)
                    pad = len(features)
                    features = concatenate_datasets([features, features.select([0])]).add_column(
                        "row_weight", [1] * len(ds) + [0])
                order = ShardedOrderSampler(order if order is not None else range(len(ds)), world_size, rank, pad)
            return DataLoader(features, batch_size=hp.eval_batch_size, sampler=order, **loader_kw)
        if hp.group_by_length:
            grouped = SortedLengthBatchSampler if hp.length_grouping == "sorted" else EpochLengthGroupedSampler
            sampler = grouped(hp.batch_size, list(ds["length"]), hp.seed)
            if world_size == 1 and getattr(self, "trainer", None) is not None:
                # resumable mid-epoch (Ctrl-C, val_check_interval); under DDP Lightning re-shards the sampler
                return ResumableDataLoader(features, sampler, hp.batch_size, self._train_batches_done, **loader_kw)
            return DataLoader(features, batch_size=hp.batch_size, sampler=sampler, **loader_kw)
        return DataLoader(features, batch_size=hp.batch_size, shuffle=True, **loader_kw)

    def _on_cuda(self) -> bool:
        """Whether the attached trainer runs on a CUDA device."""
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        if "predict" not in self.datasets and self.tokenizer is not None:
            raise DataFileError(self._no_predict_rows)
        return self._loader("predict")
