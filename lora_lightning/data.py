"""SST-2 as a ``LightningDataModule``: read, split, tokenise, batch.

A GLUE-format folder is parsed by one parser (``check_tsv``): the rows it validates are the rows
``read_split`` turns into an in-memory ``datasets.Dataset``. Files are read from their bytes on every
``setup``; nothing is cached on disk under a path or a modification time, so a file replaced in place
(``cp -p``, ``rsync -a``, an archive) is read as it is now. Without a folder the splits come from the
Hub (``datasets.load_dataset``, cached by dataset revision).

Splits (GLUE, Wang et al. 2018; SST-2, Socher et al. 2013):

- ``fit``: GLUE's train set (67,349 sentences) split ``1 - val_fraction`` / ``val_fraction``
  with ``seed`` into train (60,614) and val (6,735);
- ``test``: GLUE's labeled dev set (872 sentences), the number papers report;
- ``predict``: GLUE's unlabeled test set (1,821 sentences).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from datasets import Dataset, DatasetDict, Features, Value, load_dataset
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader
from transformers import AutoConfig, DataCollatorWithPadding, PretrainedConfig
from transformers.trainer_pt_utils import LengthGroupedSampler

from lora_lightning.errors import DataFileError, LoRALightningWarning, OptionError
from lora_lightning.hub import hub_error, load_tokenizer, resolve_model_path
from lora_lightning.loaders import ResumableDataLoader, ShardedOrderSampler

HUB_DATASET = ("nyu-mll/glue", "sst2")
FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
# Model types whose position ids start after the padding index (RoBERTa's create_position_ids_from_input_ids):
# their max_position_embeddings rows hold max_position_embeddings - padding_idx - 1 tokens. The padding
# index is config.pad_token_id, except MPNet's, fixed at 1.
POSITIONS_AFTER_PADDING = frozenset({
    "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm", "data2vec-text",
    "longformer", "ibert", "mpnet", "xmod", "luke", "markuplm",
})
UNSET_TOKENIZER_LIMIT = 10**6  # a tokenizer saved without model_max_length reports ~1e30


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
        self.epoch = epoch
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

    Only LF ends a line (a CR right before it is dropped with it). Any other character, a bare CR,
    vertical tab, form feed, U+0085, U+2028 included, is text and stays in its line as is (the
    tokenizer reads it as a space).

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


def check_tsv(path: Path, labeled: bool) -> tuple[list[str], list[list[str]]]:
    """Parse and validate a GLUE-format TSV: the one parser of the data files.

    ``read_split`` builds its ``Dataset`` from the rows returned here, so what is validated is
    exactly what is read. Lines are ``split_lines``' (LF or CRLF ends a row; a bare CR is text);
    fields are split at every tab, with no quoting (a ``"`` is text) and no missing-value parsing.

    Checks, each with one error naming the file (and line): the file exists, is not empty, is
    UTF-8 (a BOM and CRLF line ends are accepted), has a header with ``sentence`` (and ``label``
    when ``labeled``) and at least one row, every row has as many tab-separated fields as the
    header, and every label is 0 or 1 (spaces around it allowed).

    Returns:
        ``(header, rows)``: the column names, and each row's fields (str), in file order.

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
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataFileError(f"{path}, line {number}: {len(fields)} tab-separated fields, expected {len(header)} {header}")
        if label_col is not None and fields[label_col].strip() not in ("0", "1"):
            raise DataFileError(f"{path}, line {number}: label {fields[label_col]!r} is not 0 or 1")
        rows.append(fields)
    return header, rows


def read_split(path: Path, labeled: bool) -> Dataset:
    """Read one GLUE-format TSV: the rows ``check_tsv`` parsed and validated, as an in-memory ``Dataset``.

    Tab-separated, quoting off (a ``"`` is text), every field kept as a string (no NA parsing:
    ``null``/``nan``/``NA``/``true`` stay text), UTF-8 with or without BOM, LF or CRLF line ends.
    A bare CR (or any other character but LF and tab) inside a sentence is kept in it as is. Rows
    keep the file's order. The file is read from its bytes on every call: no cache.

    Returns:
        a ``Dataset`` with ``sentence`` (string) and, when ``labeled``, ``label`` (int64, 0/1); an
        unlabeled file keeps its ``index`` column (string) if it has one.

    Raises:
        DataFileError: see ``check_tsv``.
    """
    header, rows = check_tsv(path, labeled)
    keep = ["sentence", "label"] if labeled else ["sentence"] + (["index"] if "index" in header else [])
    fields = list(zip(*rows))  # column i -> its fields, in row order
    columns = {name: list(fields[header.index(name)]) for name in keep}  # first of a repeated name, as check_tsv
    if labeled:
        columns["label"] = [int(v.strip()) for v in columns["label"]]
    features = Features({name: Value("int64" if name == "label" else "string") for name in keep})
    return Dataset.from_dict(columns, features=features)


def read_lines(path: Path) -> Dataset:
    """One sentence per line of a UTF-8 text file (trailing newline stripped, empty lines kept).

    Raises:
        DataFileError: the file is missing or not valid UTF-8 (with the line).
    """
    if not path.is_file():
        raise DataFileError(f"data.predict_file: {path}: file not found")
    return Dataset.from_dict({"sentence": split_lines(path, path.read_bytes())})


def model_token_limit(config: PretrainedConfig, tokenizer=None) -> int | None:
    """The most tokens per sentence (``[CLS]`` and ``[SEP]`` included) the model can take.

    The smaller of: the rows of the model's position table (``max_position_embeddings``, or
    ``n_positions``), less ``padding_idx + 1`` for the RoBERTa-like ``POSITIONS_AFTER_PADDING`` model
    types whose position ids start after the padding index (RoBERTa-base: 514 rows, 512 tokens); and
    the tokenizer's ``model_max_length`` when it is set (a tokenizer saved without it reports ~1e30,
    which is ignored).

    Args:
        config: the model's config (``AutoConfig.from_pretrained``).
        tokenizer: the model's tokenizer, or ``None`` for the config's limit alone.

    Returns:
        tokens, or ``None`` when neither the config nor the tokenizer gives a limit.
    """
    limits = []
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(positions, int):
        if config.model_type in POSITIONS_AFTER_PADDING:
            padding_idx = 1 if config.model_type == "mpnet" else config.pad_token_id
            positions -= (padding_idx or 0) + 1
        limits.append(positions)
    tokenizer_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_max, int) and tokenizer_max < UNSET_TOKENIZER_LIMIT:
        limits.append(tokenizer_max)
    return min(limits, default=None)


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
        max_train_samples: use only the first N sentences of the train split (for quick runs), N >= 1.
        max_eval_samples: use only the first N sentences of the val and test splits, N >= 1.
        predict_file: a UTF-8 text file of one sentence per line to ``predict`` on instead of
            GLUE's ``test.tsv``; every line (empty ones too) gets a prediction, in order.
        num_workers: DataLoader worker processes (0: in the main process).

    Every option is checked before the first training step, so none fails deep inside a run:
    the ones that need no model or data when the module is built, the rest in ``setup``.

    Raises:
        OptionError: when built: ``val_fraction`` outside (0, 1), ``max_length`` < 2,
            ``batch_size`` or ``eval_batch_size`` < 1, ``max_train_samples`` or
            ``max_eval_samples`` < 1, ``num_workers`` < 0, ``seed`` outside [0, 2**32 - 1].
            In ``setup``: see there.
        DataFileError: in ``setup``, see ``read_split``.
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
        for name, value in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
            if value is not None and value < 1:  # 0 would leave an empty loader: no val_acc for the checkpoint
                raise OptionError(f"data.{name} must be >= 1 (or null for all), got {value}")
        if num_workers < 0:
            raise OptionError(f"data.num_workers must be >= 0, got {num_workers}")
        if not 0 <= seed < 2**32:  # numpy's split refuses negative seeds; Lightning's seeds are uint32 too
            raise OptionError(f"data.seed must be in [0, 2**32 - 1], got {seed}")
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
        """Load, split and tokenise; assigns ``self.datasets[name]`` for ``train``/``val``/``test``/``predict``.

        Lightning calls it before the first step of any stage, so the options that need the model
        or the data are refused here, at start.

        Raises:
            OptionError: ``max_length`` above ``model_token_limit``; a tokenizer with more tokens
                than the model's embedding table has rows; ``val_fraction`` leaving no train rows.
            DataFileError: see ``read_split`` and ``read_lines``.
            ModelNotFoundError: the model's tokenizer or config cannot be loaded.
        """
        if self.datasets:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.model_name_or_path)
        self._check_model_fits()
        raw = self.load_raw()
        try:
            split = raw["train"].train_test_split(test_size=hp.val_fraction, seed=hp.seed)
        except ValueError:  # datasets: "the resulting train set will be empty"
            path = find_data_dir(hp.data_dir)
            source = path / FILES["train"] if path is not None else f"the Hub's {HUB_DATASET[0]} train split"
            raise OptionError(f"data.val_fraction={hp.val_fraction} leaves no train rows of the "
                              f"{len(raw['train'])} in {source}") from None
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
            sizes = {k: len(parts[k]) for k in ("val", "test")}
            for k in ("val", "test"):
                parts[k] = parts[k].select(range(min(hp.max_eval_samples, len(parts[k]))))
            rank_zero_info(f"data.max_eval_samples={hp.max_eval_samples}: val uses {len(parts['val']):,} of "
                           f"{sizes['val']:,} sentences, test {len(parts['test']):,} of {sizes['test']:,}")
        self.datasets = {k: self._tokenize(ds) for k, ds in parts.items()}

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
        lengths = [len(ids) for ids in self.tokenizer(list(ds["sentence"]), verbose=False)["input_ids"]]
        n = sum(length > self.hparams.max_length for length in lengths)
        if n:
            rank_zero_warn(f"{n} of {len(lengths)} predict sentences are longer than max_length="
                           f"{self.hparams.max_length} tokens and are truncated", category=LoRALightningWarning)

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
            # SST2PredictionWriter puts predictions back in input order from Lightning's batch indices.
            order = sorted(range(len(ds)), key=ds["length"].__getitem__, reverse=True) if hp.sort_eval_by_length else None
            if world_size > 1:  # every sentence scored once across processes, none repeated
                order = ShardedOrderSampler(order if order is not None else range(len(ds)), world_size, rank)
            return DataLoader(features, batch_size=hp.eval_batch_size, sampler=order, collate_fn=collate,
                              num_workers=hp.num_workers)
        if hp.group_by_length:
            sampler = EpochLengthGroupedSampler(hp.batch_size, list(ds["length"]), hp.seed)
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
            raise DataFileError("predict needs GLUE's test.tsv in the SST-2 folder, which was not found")
        return self._loader("predict")
