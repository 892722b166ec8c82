"""SST-2 (Socher et al. 2013, from GLUE: Wang et al. 2018), the default task: where its files are,
how GLUE's TSVs are read, and ``SST2DataModule``, ``TextClassificationDataModule``'s preset.

SST-2's splits:

- ``fit``: GLUE's train set (67,349 phrases of ~8,500 sentences), ``val_fraction`` of it held out as val,
  by source sentence (``data.val_split``, see ``splits.py``);
- ``test``: GLUE's labeled dev set (872 sentences), the number papers report;
- ``predict``: GLUE's unlabeled test set (1,821 sentences).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from datasets import Dataset, Features, Value, load_dataset
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from lora_lightning.data.base import TextClassificationDataModule
from lora_lightning.data.options import plain_options
from lora_lightning.data.splits import group_split, phrase_groups, phrase_overlap
from lora_lightning.errors import DataFileError, LoRALightningWarning, OptionError, option
from lora_lightning.tables import check_columns, encode_labels, read_table

HUB_DATASET = ("nyu-mll/glue", "sst2")
FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}


def find_data_dir(data_dir: str | None) -> Path | None:
    """``data_dir`` if given, else ``$GLUE_DIR/SST-2`` if ``GLUE_DIR`` is set, else ``None`` (the Hub).

    Raises:
        DataFileError: the chosen folder does not exist.
    """
    if data_dir is None and os.environ.get("GLUE_DIR"):
        data_dir = os.path.join(os.environ["GLUE_DIR"], "SST-2")
        origin = "GLUE_DIR"
    else:
        origin = option("data", "data_dir")
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataFileError(f"{origin}: SST-2 folder {path} does not exist (expected train.tsv and dev.tsv in it)")
    if not (path / FILES["train"]).is_file() and (path / "SST-2" / FILES["train"]).is_file():
        raise DataFileError(f"{origin}: {path} holds SST-2/, not the files: pass {path / 'SST-2'}")
    return path


def read_split(path: Path, labeled: bool) -> Dataset:
    """Read one GLUE-format SST-2 TSV (``tables.check_tsv``'s parse) as an in-memory ``Dataset``.

    Tab-separated, quoting off (a ``"`` is text), every field kept as a string (no NA parsing:
    ``null``/``nan``/``NA``/``true`` stay text), UTF-8 with or without BOM, LF or CRLF line ends.
    A bare CR (or any other character but LF and tab) inside a sentence is kept in it as is. Rows
    keep the file's order. The file is read from its bytes on every call: no cache.

    Returns:
        a ``Dataset`` with ``sentence`` (string) and, when ``labeled``, ``label`` (int64, 0/1); an
        unlabeled file keeps its ``index`` column (string) if it has one.

    Raises:
        DataFileError: see ``tables.check_tsv``; a missing ``sentence``/``label`` column (line 1),
            a label that is not 0 or 1 (its line).
    """
    table = read_table(path, "data.data_dir", tsv_quoting="none")  # GLUE's files: no quoting, a " is text
    need = ["sentence", "label"] if labeled else ["sentence"]
    hint = " (GLUE's test.tsv has no labels: use `predict` for it; `test` uses the labeled dev.tsv)" \
        if labeled and "label" not in table.column_names and "sentence" in table.column_names else ""
    check_columns(table, {c: f"data.{c}" for c in need}, hint=hint)
    if not labeled:
        keep = ["sentence"] + (["index"] if "index" in table.column_names else [])
        return table.dataset(keep)
    ids = encode_labels(table, [v.strip() for v in table["label"]], {"0": 0, "1": 1}, "0 or 1")
    return Dataset.from_dict({"sentence": table["sentence"], "label": ids},
                             features=Features({"sentence": Value("string"), "label": Value("int64")}))


class SST2DataModule(TextClassificationDataModule):
    """SST-2 (binary sentiment, Socher et al. 2013, from GLUE): ``TextClassificationDataModule``'s preset.

    Data source, first that applies: ``data_dir`` (a GLUE-format ``SST-2`` folder with
    ``train.tsv``, ``dev.tsv`` and optionally ``test.tsv``), ``$GLUE_DIR/SST-2``, the Hub's
    ``nyu-mll/glue`` (config ``sst2``). Splits: GLUE's train set, ``val_fraction`` of it held out
    (seeded) as val, by source sentence (``val_split``); GLUE's labeled dev set as ``test``; GLUE's
    unlabeled test set as ``predict``. Text column ``sentence``; labels 0/1, named ``negative``/``positive``.

    ``setup`` says in one line how the val split was made and how many val phrases occur inside a train
    phrase, counted as runs of whole words (``splits.phrase_overlap``): 0.0% by source sentence (GLUE dev:
    0.1%), 88.3% for the seed's random split (seed 42).

    Args:
        model_name_or_path: the model whose fast tokenizer is used (linked to the model's by the CLI).
        data_dir: GLUE-format SST-2 folder; ``None`` for ``$GLUE_DIR/SST-2`` or the Hub.
        batch_size: training sentences per optimizer step.
        eval_batch_size: sentences per validation/test/predict batch.
        max_length: tokens per sentence at most (including [CLS] and [SEP]); longer are truncated.
        val_fraction: share of GLUE's train set held out as the val split (rows), in (0, 1).
        val_split: ``by_sentence`` (the default): GLUE's train rows are phrases of ~8,500 sentences, and
            whole sentences, with every phrase found in no other sentence, are held out, so that no val
            phrase occurs inside a train phrase, as on GLUE dev (``splits.phrase_groups``; phrases found
            in several sentences, such as "good", stay in train). ``random``: the seed's split of single
            rows, whose val shares most of its phrases with train (val_acc ~4 points above GLUE dev).
        seed: seed of the train/val split and of the length-grouped shuffle.
        group_by_length: batch training sentences of similar length (less padding).
        length_grouping: ``sorted`` or ``megabatch``, as ``TextClassificationDataModule``'s.
        sort_eval_by_length: run val/test batches longest first (less padding; metrics don't depend on
            order). ``predict`` runs in file order, so ``trainer.predict`` returns rows in input order. With
            ``trainer.limit_val_batches`` / ``limit_test_batches`` below the whole set, the batches scored are
            the first rows in file order, sorted among themselves.
        max_train_samples: use only the first N sentences of the train split (for quick runs), N >= 1.
        max_eval_samples: use only the first N sentences of the val and test splits, N >= 1.
        predict_file: a file to ``predict`` on instead of GLUE's ``test.tsv``: a UTF-8 text file of
            one sentence per line (every line, empty ones too, gets a prediction, in order), or a
            ``.tsv``/``.csv``/``.jsonl``/``.parquet`` file with a ``sentence`` column.
        num_workers: DataLoader worker processes (0: in the main process).

    Raises:
        OptionError: as ``TextClassificationDataModule``.
        DataFileError: in ``setup``, see ``read_split``.
    """

    LABELS = (0, 1)
    LABEL_NAMES = ("negative", "positive")
    _no_predict_rows = "predict needs GLUE's test.tsv in the SST-2 folder, which was not found (or --data.predict_file)"

    def __init__(
        self,
        model_name_or_path: str = "sentence-transformers/all-MiniLM-L6-v2",
        data_dir: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        max_length: int = 128,
        val_fraction: float = 0.1,
        val_split: Literal["by_sentence", "random"] = "by_sentence",
        seed: int = 42,
        group_by_length: bool = True,
        length_grouping: Literal["sorted", "megabatch"] = "sorted",
        sort_eval_by_length: bool = True,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        predict_file: str | None = None,
        num_workers: int = 0,
    ) -> None:
        given = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        o = plain_options(**given)  # plain values (C22)
        shared = ("model_name_or_path", "batch_size", "eval_batch_size", "max_length", "val_fraction", "seed",
                  "group_by_length", "length_grouping", "sort_eval_by_length", "max_train_samples", "max_eval_samples",
                  "predict_file", "num_workers")
        super().__init__(train_file=None, text_column="sentence", label_column="label", **{k: o[k] for k in shared})
        # this preset's options only: the base class's file and column options are data_dir's and SST-2's
        self.save_hyperparameters(o)

    duplicate_checked = ("test",)  # val: split_val counts every val phrase inside a train phrase, duplicates included

    def split_val(self, train: Dataset) -> tuple[Dataset, Dataset]:
        """``val_fraction`` of GLUE's train set as val: whole source sentences (``by_sentence``) or single
        rows (``random``); says which in one line, with the share of val phrases inside a train phrase."""
        hp = self.hparams
        if hp.val_split == "random":  # the seed's split of single rows (datasets'), kept as it was
            try:
                split = train.train_test_split(test_size=hp.val_fraction, seed=hp.seed)
            except ValueError:  # datasets: "the resulting train set will be empty"
                raise OptionError(f"{option('data', 'val_fraction')}={hp.val_fraction} leaves no train rows of the "
                                  f"{len(train)} in {self._train_source()}") from None
            train, val = split["train"], split["test"]
            overlap = phrase_overlap(train["sentence"], val["sentence"])
            flag = option("data", "val_split")
            rank_zero_warn(f"{flag}=random (the seed's split, seed {hp.seed}): {overlap:.1%} of the {len(val):,} val "
                           f"phrases occur inside a train phrase, so val_acc runs above GLUE dev; {flag}="
                           f"by_sentence (the default) holds out whole sentences instead", category=LoRALightningWarning)
            return train, val
        groups = phrase_groups(train["sentence"])
        try:
            keep, held = group_split(groups, hp.val_fraction, hp.seed)
        except ValueError as error:
            raise OptionError(f"{option('data', 'val_split')}=by_sentence: {self._train_source()} has {error}") from None
        train, val = train.select(keep), train.select(held)
        overlap = phrase_overlap(train["sentence"], val["sentence"])
        shared = sum(g is None for g in groups)
        rank_zero_info(f"SST-2 val split by source sentence ({option('data', 'val_split')}=by_sentence, seed {hp.seed}): val {len(held):,} "
                       f"phrases of {len({groups[i] for i in held}):,} sentences, train {len(keep):,} phrases of "
                       f"{len({g for g in groups if g is not None}) - len({groups[i] for i in held}):,} sentences and "
                       f"{shared:,} phrases found in several sentences (kept in train); val phrases inside a train phrase: {overlap:.1%}")
        return train, val

    def _hub(self) -> dict[str, Dataset]:
        """GLUE's SST-2 from the Hub (``datasets``' cache) as ``train``, ``test`` (GLUE dev), ``predict`` (GLUE test)."""
        try:
            raw = load_dataset(*HUB_DATASET)  # columns sentence, label, idx; the test labels are all -1
        except Exception as error:  # offline, no access: datasets raises ConnectionError, FileNotFoundError, ...
            raise DataFileError(
                f"SST-2: no data.data_dir and no GLUE_DIR, and the Hub's {HUB_DATASET[0]} ({HUB_DATASET[1]}) "
                f"could not be loaded ({type(error).__name__}). Set GLUE_DIR to the folder holding SST-2/ "
                f"(e.g. export GLUE_DIR=../shared/data/glue) or pass --data.data_dir"
            ) from None
        return {"train": raw["train"].remove_columns("idx"), "test": raw["validation"].remove_columns("idx"),
                "predict": raw["test"].remove_columns("label").rename_column("idx", "index")}

    def prepare_data(self) -> None:
        """Download / cache SST-2 (when it comes from the Hub and the stage reads it: not ``predict`` on a
        ``predict_file``) and the tokenizer once (no state is set)."""
        trainer = getattr(self, "trainer", None)
        own_rows = self.files["predict"] is not None and trainer is not None and trainer.state.fn == "predict"
        if find_data_dir(self.hparams.data_dir) is None and not own_rows:
            self._hub()
        super().prepare_data()

    def load_raw(self, splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, Dataset]:
        """Of ``splits``, GLUE's SST-2 ``train`` and ``test`` (GLUE dev); ``val`` is cut from train."""
        path = find_data_dir(self.hparams.data_dir)
        if path is None:
            return {k: v for k, v in self._hub().items() if k in splits}
        names = {"train": FILES["train"], "test": FILES["validation"]}
        return {split: read_split(path / names[split], True) for split in splits if split in names}

    def read_predict(self) -> Dataset | None:
        """``predict_file`` when given, else GLUE's test set (``test.tsv``; ``None`` when the folder has none)."""
        if self.files["predict"] is not None:
            return super().read_predict()
        path = find_data_dir(self.hparams.data_dir)
        if path is None:
            return self._hub()["predict"]
        return read_split(path / FILES["test"], False) if (path / FILES["test"]).is_file() else None

    def _train_source(self) -> str:
        path = find_data_dir(self.hparams.data_dir)
        return str(path / FILES["train"]) if path is not None else f"the Hub's {HUB_DATASET[0]} train split"
