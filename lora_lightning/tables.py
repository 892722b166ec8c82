"""Labeled text files, read and checked: TSV, CSV, JSON lines / JSON, Parquet, and plain text lines.

One reader per format, chosen by the file's extension, and every check runs on the rows that reader
returns, so what is validated is exactly what is trained on:

- ``.tsv``: this package's parser (``check_tsv``): GLUE's rules, a tab ends every field, no quoting
  (a ``"`` is text), LF or CRLF ends a row (a bare CR is text), every field a string;
- ``.csv``: ``datasets``' CSV builder (pandas), quoting as CSV defines it (RFC 4180), every field
  read as a string (no missing-value parsing: ``NA``, ``null``, empty stay text);
- ``.jsonl`` / ``.json``: ``datasets``' JSON builder (one object per line, or a list of objects);
- ``.parquet``: ``datasets``' Parquet builder;
- ``.txt`` (``predict`` only): one text per line, see ``read_lines``.

Files are parsed from their bytes on every call (``datasets`` builds in a temporary folder that is
removed after): no cache keyed on a path or a modification time. Errors are one line naming the
file, the line (TSV) or row (the other formats, 1-based, header not counted), and the value.
"""

from __future__ import annotations

import csv
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, Features, Value

from lora_lightning.errors import DataFileError

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
INTEGER = re.compile(r"\s*[-+]?\d+\s*")


@dataclass
class Table:
    """The rows of one file, with where each came from.

    Attributes:
        path: the file.
        rows: its rows as a ``Dataset``, in file order (TSV/CSV: every column a string).
        option: the option that named the file (e.g. ``data.train_file``), for errors.
    """

    path: Path
    rows: Dataset
    option: str

    @property
    def text_format(self) -> bool:
        """Whether every field was read as a string (TSV, CSV): labels are then parsed from text."""
        return self.path.suffix.lower() in (".tsv", ".csv")

    def where(self, i: int) -> str:
        """``path, line N`` (TSV: the header is line 1) or ``path, row N`` for row index ``i``."""
        if self.path.suffix.lower() == ".tsv":
            return f"{self.path}, line {i + 2}"
        return f"{self.path}, row {i + 1}"


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


def check_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Parse a GLUE-format TSV: the one parser of ``.tsv`` files.

    Lines are ``split_lines``' (LF or CRLF ends a row; a bare CR is text); fields are split at every
    tab, with no quoting (a ``"`` is text) and no missing-value parsing.

    Returns:
        ``(header, rows)``: the column names, and each row's fields (str), in file order.

    Raises:
        DataFileError: naming the file (and line): missing, empty, not UTF-8, a header and no rows,
            a row with another number of fields than the header.
    """
    if not path.is_file():
        raise DataFileError(f"{path}: file not found")
    data = path.read_bytes()
    if not data.strip():
        raise DataFileError(f"{path}: file is empty (expected a header row, e.g. 'sentence<TAB>label')")
    lines = split_lines(path, data)
    header = lines[0].split("\t")
    if len(lines) == 1:
        raise DataFileError(f"{path}: has a header but no rows")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataFileError(f"{path}, line {number}: {len(fields)} tab-separated fields, expected {len(header)} {header}")
        rows.append(fields)
    return header, rows


def _read_tsv(path: Path) -> Dataset:
    header, rows = check_tsv(path)
    fields = list(zip(*rows))  # column i -> its fields, in row order
    names = list(dict.fromkeys(header))  # a repeated name: its first column
    return Dataset.from_dict({name: list(fields[header.index(name)]) for name in names},
                             features=Features({name: Value("string") for name in names}))


def _read_with_datasets(path: Path, kind: str) -> Dataset:
    """``datasets``' builder for ``kind``, built in a temporary cache folder and kept in memory."""
    with tempfile.TemporaryDirectory(prefix="lora_lightning-") as cache_dir:
        options = {"cache_dir": cache_dir, "keep_in_memory": True}
        if kind == "csv":
            with path.open(newline="", encoding="utf-8-sig") as f:
                header = next(csv.reader(f), None)
            if not header:
                raise DataFileError(f"{path}: file is empty (expected a header row, e.g. 'text,label')")
            # every column a string: pandas would otherwise turn 007 into 7 and NA into a missing value
            options.update(features=Features({name: Value("string") for name in dict.fromkeys(header)}),
                           keep_default_na=False, na_filter=False)
            return Dataset.from_csv(str(path), **options)
        if kind == "json":
            return Dataset.from_json(str(path), **options)
        return Dataset.from_parquet(str(path), **options)


def read_table(path: str | Path, option: str) -> Table:
    """Read a ``.tsv``, ``.csv``, ``.jsonl``/``.json`` or ``.parquet`` file (see the module's docstring).

    Args:
        path: the file.
        option: the option that named it (``data.train_file``, ...), for errors.

    Raises:
        DataFileError: the file is missing, has another extension, cannot be parsed (the reader's
            reason in one line), or has no rows.
    """
    path = Path(path).expanduser()
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataFileError(f"{option}: {path}: unknown file type {path.suffix!r} (expected {', '.join(FORMATS)})")
    if not path.is_file():
        raise DataFileError(f"{option}: {path}: file not found")
    if kind == "tsv":
        rows = _read_tsv(path)
    else:
        try:
            rows = _read_with_datasets(path, kind)
        except DataFileError:
            raise
        except UnicodeDecodeError as error:
            raise DataFileError(f"{path}: not valid UTF-8 ({error.reason})") from None
        except Exception as error:  # pandas / pyarrow parse errors, by type and version
            cause = error.__cause__ or error
            reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            raise DataFileError(f"{path}: cannot be read as {kind.upper()}: {reason}") from None
        if len(rows) == 0:
            raise DataFileError(f"{path}: has no rows")
    return Table(path, rows, option)


def read_lines(path: str | Path, option: str = "data.predict_file") -> Dataset:
    """One text per line of a UTF-8 file (trailing newline stripped, empty lines kept), as a
    ``Dataset`` with one column, ``text``.

    Raises:
        DataFileError: the file is missing or not valid UTF-8 (with the line).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataFileError(f"{option}: {path}: file not found")
    return Dataset.from_dict({"text": split_lines(path, path.read_bytes())})


def check_columns(table: Table, needed: dict[str, str], hint: str | None = None) -> None:
    """Refuse a table without the columns ``needed`` (column -> the option that names it).

    ``hint`` ends the message (``None``: which option to set to another column).

    Raises:
        DataFileError: ``path, line 1`` (TSV/CSV) naming the missing columns and listing those that exist.
    """
    columns = table.rows.column_names
    missing = [c for c in needed if c not in columns]
    if missing:
        where = f"{table.path}, line 1" if table.text_format else str(table.path)
        options = ", ".join(f"{needed[c]}={c!r}" for c in missing)
        raise DataFileError(f"{where}: missing column(s) {missing} in header {columns}{hint if hint is not None else f' ({options}: name one of these columns)'}")


def check_text(table: Table, column: str) -> None:
    """Every value of ``column`` is text (a string; empty is allowed).

    Raises:
        DataFileError: the first row whose value is not a string (a number, null, a list), with it.
    """
    values = table.rows[column]
    if table.rows.features[column] == Value("string") and None not in values:
        return
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise DataFileError(f"{table.where(i)}: column {column!r} holds {value!r} ({type(value).__name__}), "
                                "expected text")


def label_values(table: Table, column: str) -> list[int | str]:
    """The labels of ``column``, as integers or as strings, one type for the whole column.

    In TSV/CSV every field is text: a column whose every value is an integer (``-3``, `` 1 ``) gives
    integers, otherwise strings (stripped). JSON and Parquet keep their types: integers or strings.

    Raises:
        DataFileError: naming the row and value: an empty or missing label; a column that mixes
            integers and text; a value that is neither (a float, a boolean, a list).
    """
    values = table.rows[column]
    if table.text_format:
        values = [v.strip() for v in values]
        integers = [bool(INTEGER.fullmatch(v)) for v in values]
        if all(integers):
            return [int(v) for v in values]
        if any(integers):
            i, j = integers.index(True), integers.index(False)
            raise DataFileError(f"{table.where(j)}: label {values[j]!r} is text but {table.where(i)} has the integer "
                                f"label {values[i]!r}: a label column holds integers or text, not both")
    kinds = set()
    for i, value in enumerate(values):
        if value is None or value == "":
            raise DataFileError(f"{table.where(i)}: empty label in column {column!r}")
        kind = int if isinstance(value, int) and not isinstance(value, bool) else str if isinstance(value, str) else None
        if kind is None:
            raise DataFileError(f"{table.where(i)}: label {value!r} ({type(value).__name__}) in column {column!r}: "
                                "expected an integer or a string")
        kinds.add(kind)
        if len(kinds) > 1:
            raise DataFileError(f"{table.where(i)}: label {value!r} is a{'n integer' if kind is int else ' string'} but "
                                f"earlier rows of column {column!r} are not: a label column holds integers or text, not both")
    return list(values)


def encode_labels(table: Table, values: list[int | str], label2id: dict, known: str) -> list[int]:
    """``values`` as class ids.

    Args:
        table: where the values came from (for errors).
        values: ``label_values``' output.
        label2id: label value -> class id.
        known: how to say which labels are allowed, e.g. ``"0 or 1"``.

    Raises:
        DataFileError: the first value not in ``label2id``, naming its line/row.
    """
    ids = []
    for i, value in enumerate(values):
        if value not in label2id:
            raise DataFileError(f"{table.where(i)}: label {value!r} is not {known}")
        ids.append(label2id[value])
    return ids
