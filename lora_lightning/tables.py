"""Labeled text files, read and checked: TSV, CSV, JSON lines / JSON, Parquet, and plain text lines.

One reader per format, chosen by the file's extension, and every check runs on the rows that reader
returns, so what is validated is exactly what is trained on. Every error is one line naming the file,
the line an editor shows for the row (1-based, the header counted), or for Parquet the row (1-based),
and the value.

- ``.tsv``: tab-separated, one header row, every field a string. Two dialects exist in the wild:
  GLUE's, with no quoting at all (a ``"`` is text, ``check_tsv``), and the quoted one that pandas
  (``to_csv(sep="\\t")``), Python's ``excel-tab`` and spreadsheets write, where a field holding a tab, a
  line break or a ``"`` is enclosed in ``"`` (inner quotes doubled) and may span lines. ``quoting="auto"``
  (``tsv_dialect``) reads a file the one way its content allows; where both readings are valid and
  differ, it asks for ``data.tsv_quoting``;
- ``.csv``: Python's ``csv`` module, quoting as RFC 4180 defines it (a quoted field may span lines),
  every field a string (no missing-value parsing: ``NA``, ``null``, empty stay text);
- ``.jsonl`` / ``.json``: Python's ``json``, one object per line (blank lines skipped), or a ``.json``
  array of objects; values keep their JSON types;
- ``.parquet``: ``datasets``' Parquet builder (pyarrow), types as stored;
- ``.txt`` (``predict`` only): one text per line, see ``read_lines``.

The text readers are the standard library's, not ``datasets``' (pandas) builders, because those do not
say on which line of the file a row starts. Files are parsed from their bytes on every call: no cache
keyed on a path or a modification time.

Labels (``label_values``) are compared as text, so a CSV ``0``, a JSON ``0`` and a JSON ``"0"`` are one
class, and ``01`` and ``1`` are two.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from datasets import Dataset, Features, Value

from lora_lightning.errors import DataFileError, option

FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TsvQuoting = Literal["auto", "none", "csv"]
INTEGER = re.compile(r"[-+]?(0|[1-9][0-9]*)")  # a plain integer: no leading zero
DIGITS = re.compile(r"[-+]?[0-9]+")  # digits, leading zeros allowed: "01" is a code, not the integer 1


@dataclass
class Table:
    """The rows of one file, with where each came from.

    Attributes:
        path: the file.
        columns: column name -> its values, one per row, in file order (TSV/CSV: strings).
        option: the option that named the file (e.g. ``data.train_file``), for errors.
        lines: the 1-based line of the file on which each row starts (``None``: Parquet, no lines).
        text_format: whether every field was read as text (TSV, CSV), not typed (JSON, Parquet).
        notes: what reading changed, one line each, for the data module to warn of (a lone surrogate replaced).
    """

    path: Path
    columns: dict[str, list]
    option: str
    lines: list[int] | None = None
    text_format: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def __getitem__(self, column: str) -> list:
        return self.columns[column]

    def where(self, i: int) -> str:
        """``path, line N`` (the line an editor shows row ``i`` starting on) or, for Parquet, ``path, row N``."""
        if self.lines is not None:
            return f"{self.path}, line {self.lines[i]}"
        return f"{self.path}, row {i + 1}"

    def header_where(self) -> str:
        """Where the column names are: ``path, line 1`` for TSV/CSV, else the path."""
        return f"{self.path}, line 1" if self.text_format else str(self.path)

    def dataset(self, columns: list[str]) -> Dataset:
        """``columns`` as an in-memory ``Dataset`` of strings (check them with ``check_text`` first)."""
        return Dataset.from_dict({c: list(self.columns[c]) for c in columns},
                                 features=Features({c: Value("string") for c in columns}))


def decode(path: Path, data: bytes) -> str:
    """UTF-8 (BOM allowed) ``data`` as text. A file whose lines end in CR alone (classic Mac OS, some
    spreadsheet exports: a CR and no LF anywhere) has its CRs read as line ends; in a file with LFs, a
    bare CR is text (C18).

    Raises:
        DataFileError: invalid UTF-8, naming ``path`` and the line.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        ends = b"\n" if b"\n" in data else b"\r"
        line = data[: error.start].count(ends) + 1
        raise DataFileError(f"{path}, line {line}: not valid UTF-8 ({error.reason})") from None
    if "\r" in text and "\n" not in text:
        text = text.replace("\r", "\n")
    return text


def split_lines(path: Path, data: bytes) -> list[str]:
    """UTF-8 (BOM allowed) ``data`` as lines without their LF or CRLF ends; the final newline ends
    the last line rather than starting an empty one.

    Only LF ends a line (a CR right before it is dropped with it; in a file without any LF, CR ends a
    line: ``decode``). Any other character, a bare CR in a file of LF lines, vertical tab, form feed,
    U+0085, U+2028 included, is text and stays in its line as is (the tokenizer reads it as a space).

    Raises:
        DataFileError: invalid UTF-8, naming ``path`` and the line.
    """
    lines = [line.removesuffix("\r") for line in decode(path, data).split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def check_tsv(path: Path, names: list[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """Parse a GLUE-format TSV (no quoting): a tab ends every field, a ``"`` is text.

    Lines are ``split_lines``' (LF or CRLF ends a row; a bare CR is text); no missing-value parsing. With
    ``names`` the file has no header row: they name its columns, by position, and line 1 is a row.

    Returns:
        ``(header, rows)``: the column names, and each row's fields (str), in file order; row ``i`` is on
        line ``i + 2`` (``i + 1`` with ``names``).

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
    header, first = (list(names), 1) if names else (lines[0].split("\t"), 2)
    if len(lines) < first:
        raise DataFileError(f"{path}: has a header but no rows")
    rows = []
    for number, line in enumerate(lines[first - 1:], start=first):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataFileError(f"{path}, line {number}: {len(fields)} tab-separated fields, expected {len(header)} "
                                f"{header}{_named(names)}")
        rows.append(fields)
    return header, rows


def _named(names: list[str] | None) -> str:
    return f" (data.column_names, for a file without a header row)" if names else ""


def records(text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """``text`` parsed by Python's ``csv`` module (RFC 4180 quoting, ``strict``): a field in ``"`` may hold the
    delimiter, line breaks and doubled ``""``. Blank lines are skipped.

    Returns:
        ``(line, fields)`` of every record, ``line`` the 1-based line it starts on (only LF ends a line).

    A field may be of any length (Python's default limit of 131,072 characters is lifted while reading: a
    whole document in one cell is valid CSV; ``max_length`` decides how much of it the model sees).

    Raises:
        csv.Error: a malformed quote; its line is ``error.line``.
    """
    with _no_field_limit():
        return _records(text, delimiter)


@contextmanager
def _no_field_limit():
    """``csv.field_size_limit`` at its largest (a C long) inside, as it was after."""
    before = csv.field_size_limit()
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            break
        except OverflowError:  # a 32-bit C long (Windows)
            limit //= 2
    try:
        yield
    finally:
        csv.field_size_limit(before)


def _records(text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    reader = csv.reader(io.StringIO(text, newline="\n"), delimiter=delimiter, quotechar='"', doublequote=True, strict=True)
    out, done = [], 0
    try:
        for record in reader:
            start, done = done + 1, reader.line_num
            if record and record != [""]:
                out.append((start, record))
    except csv.Error as error:
        error.line = done + 1
        raise
    return out


def read_delimited(path: Path, text: str, delimiter: str,
                   names: list[str] | None = None) -> tuple[list[str], list[list[str]], list[int]]:
    """Parse ``text`` with ``records`` and check it: a header (or ``names``, for a file without one), then rows of
    as many fields.

    Returns:
        ``(header, rows, lines)``: column names, each row's fields, and the line each row starts on.

    Raises:
        DataFileError: a malformed quote or another number of fields than the header, with the line.
    """
    kind = "TSV" if delimiter == "\t" else "CSV"
    try:
        parsed = records(text, delimiter)
    except csv.Error as error:
        raise DataFileError(f"{path}, line {error.line}: cannot be read as {kind} with quoting: {error}") from None
    if not parsed:
        raise DataFileError(f"{path}: file is empty (expected a header row, e.g. 'text{delimiter}label')")
    (_, header), rows = (((0, list(names)), parsed) if names else (parsed[0], parsed[1:]))
    if not rows:
        raise DataFileError(f"{path}: has a header but no rows")
    for start, fields in rows:
        if len(fields) != len(header):
            separated = "tab-separated" if delimiter == "\t" else "comma-separated"
            raise DataFileError(f"{path}, line {start}: {len(fields)} {separated} fields, expected {len(header)} {header}"
                                f"{_named(names)}")
    return header, [fields for _, fields in rows], [start for start, _ in rows]


def tsv_dialect(path: Path, text: str) -> TsvQuoting:
    """Which TSV dialect ``text`` is in: ``none`` (GLUE's: ``"`` is text) or ``csv`` (quoted fields).

    ``csv`` when the unquoted reading fails (a quoted field spans lines or holds a tab) but the quoted one
    does not, or when a field reads differently and shows the quoting (doubled ``""`` inside, or a tab or
    line break); ``none`` when the quoted reading fails (GLUE's ``" the movie``) or both agree.

    Raises:
        DataFileError: both readings are valid and differ on a field with nothing that shows the quoting
            (``"great"``): names the line, both readings, and ``data.tsv_quoting``.
    """
    if '"' not in text:
        return "none"
    try:
        quoted = records(text, "\t")
    except csv.Error:
        return "none"
    plain = [line.removesuffix("\r").split("\t") for line in text.split("\n")]
    differ = [(start, plain[start - 1], fields) for start, fields in quoted if plain[start - 1] != fields]
    for _, raw, fields in differ:
        if len(raw) != len(fields) or any('""' in f or "\t" in f or "\n" in f for f in fields + raw):
            return "csv"
    if differ:
        start, raw, fields = differ[0]
        field, reading = next((r, f) for r, f in zip(raw, fields) if r != f)
        raise DataFileError(
            f"{path}, line {start}: the field {field!r} reads as {reading!r} with TSV quoting (pandas, spreadsheets) "
            f"and as {field!r} without it (GLUE's TSVs): pass --data.tsv_quoting csv or --data.tsv_quoting none")
    return "none"


def _read_tsv(path: Path, quoting: TsvQuoting, names: list[str] | None = None) -> tuple[dict[str, list], list[int]]:
    if quoting == "none":
        header, rows = check_tsv(path, names)
        first = 1 if names else 2
        lines = list(range(first, len(rows) + first))
    else:
        data = path.read_bytes()
        if not data.strip():
            raise DataFileError(f"{path}: file is empty (expected a header row, e.g. 'sentence<TAB>label')")
        text = decode(path, data)
        if quoting == "auto" and tsv_dialect(path, text) == "none":
            return _read_tsv(path, "none", names)
        header, rows, lines = read_delimited(path, text, "\t", names)
    return _columns(header, rows), lines


def _columns(header: list[str], rows: list[list[str]]) -> dict[str, list]:
    fields = list(zip(*rows))  # column i -> its fields, in row order
    return {name: list(fields[header.index(name)]) for name in dict.fromkeys(header)}  # a repeated name: its first column


def _read_csv(path: Path, names: list[str] | None = None) -> tuple[dict[str, list], list[int]]:
    data = path.read_bytes()
    if not data.strip():
        raise DataFileError(f"{path}: file is empty (expected a header row, e.g. 'text,label')")
    header, rows, lines = read_delimited(path, decode(path, data), ",", names)
    return _columns(header, rows), lines


def _read_json(path: Path) -> tuple[dict[str, list], list[int]]:
    """JSON lines (one object per line, blank lines skipped) or a JSON array of objects; missing keys are ``None``."""
    text = decode(path, path.read_bytes())
    if not text.strip():
        raise DataFileError(f"{path}: file is empty (expected one JSON object per line)")
    objects, lines = [], []
    decoder = json.JSONDecoder()
    start = len(text) - len(text.lstrip())
    if text[start] == "[":  # an array: each object's line from its offset
        pos = start + 1
        while True:
            pos += len(text[pos:]) - len(text[pos:].lstrip(" \t\r\n,"))
            if pos >= len(text) or text[pos] == "]":
                break
            try:
                value, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as error:
                raise DataFileError(f"{path}, line {error.lineno}: cannot be read as JSON: {error.msg}") from None
            objects.append(value)
            lines.append(text.count("\n", 0, pos) + 1)
            pos = end
    else:
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                objects.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataFileError(f"{path}, line {number}: cannot be read as JSON lines: {error.msg}") from None
            lines.append(number)
    for value, number in zip(objects, lines):
        if not isinstance(value, dict):
            raise DataFileError(f"{path}, line {number}: {type(value).__name__} where a JSON object "
                                '({"text": ..., "label": ...}) was expected')
    names = list(dict.fromkeys(k for obj in objects for k in obj))
    return {name: [obj.get(name) for obj in objects] for name in names}, lines


SURROGATE = re.compile("[\ud800-\udfff]")  # left alone in a str only when unpaired: json pairs the rest


def replace_surrogates(table: "Table") -> None:
    """Replace every lone UTF-16 surrogate in ``table``'s strings by U+FFFD, in place, and note where (C30).

    JSON's ``\\ud83d`` escapes may encode half of a pair (an emoji cut by a UTF-16 length limit); ``json`` accepts
    it, but it is no character: UTF-8 (Arrow, the tokenizer, a YAML or JSON config) cannot hold it. The row is kept.
    """
    found = []
    for name, values in table.columns.items():
        for i, value in enumerate(values):
            fixed = _without_surrogates(value)
            if fixed is not value:
                values[i] = fixed
                found.append(i)
    if found:
        first = sorted(set(found))
        more = f" (and {len(first) - 1:,} more rows)" if len(first) > 1 else ""
        table.notes.append(f"{table.where(first[0])}: a lone UTF-16 surrogate (half of a character, e.g. an emoji cut "
                           f"by a length limit) replaced by U+FFFD{more}; the rows are kept")


def _without_surrogates(value):
    """``value`` with lone surrogates replaced (in strings inside lists and dicts too); the same object if it has none."""
    if isinstance(value, str):
        return SURROGATE.sub("\ufffd", value) if SURROGATE.search(value) else value
    if isinstance(value, (list, dict)) and SURROGATE.search(json.dumps(value, ensure_ascii=False)):
        if isinstance(value, list):
            return [_without_surrogates(v) for v in value]
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    return value


def _read_parquet(path: Path) -> dict[str, list]:
    with tempfile.TemporaryDirectory(prefix="lora_lightning-") as cache_dir:
        try:
            rows = Dataset.from_parquet(str(path), cache_dir=cache_dir, keep_in_memory=True)
        except Exception as error:  # pyarrow's errors, by type and version
            cause = error.__cause__ or error
            reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            raise DataFileError(f"{path}: cannot be read as PARQUET: {reason}") from None
    return rows.to_dict()


def read_table(path: str | Path, option: str, tsv_quoting: TsvQuoting = "auto",
               column_names: list[str] | None = None) -> Table:
    """Read a ``.tsv``, ``.csv``, ``.jsonl``/``.json`` or ``.parquet`` file (see the module's docstring).

    Args:
        path: the file.
        option: the option that named it (``data.train_file``, ...), for errors.
        tsv_quoting: a ``.tsv``'s dialect: ``auto`` (``tsv_dialect``), ``none`` (GLUE's) or ``csv`` (quoted).
        column_names: a TSV / CSV without a header row (GoEmotions'): the names of its columns, by position;
            its first line is a row. JSON and Parquet name their own columns.

    Raises:
        DataFileError: the file is missing (naming the folder it was looked for in, when relative), has
            another extension, cannot be parsed (the line and the reader's reason), or has no rows; a row with
            another number of fields than ``column_names``.
    """
    given = Path(path).expanduser()
    kind = FORMATS.get(given.suffix.lower())
    if kind is None:
        raise DataFileError(f"{option}: {given}: unknown file type {given.suffix!r} (expected {', '.join(FORMATS)})")
    if not given.is_file():
        raise DataFileError(not_found(option, given))
    lines = None
    if kind == "tsv":
        columns, lines = _read_tsv(given, tsv_quoting, column_names)
    elif kind == "csv":
        columns, lines = _read_csv(given, column_names)
    elif kind == "json":
        columns, lines = _read_json(given)
    else:
        columns = _read_parquet(given)
    table = Table(given, columns, option, lines, text_format=kind in ("tsv", "csv"))
    if len(table) == 0:
        raise DataFileError(f"{given}: has no rows")
    if kind == "json":
        replace_surrogates(table)
    return table


def not_found(option: str, path: Path) -> str:
    """The "file not found" line: the option, the path, and for a relative path the folder it was looked for in."""
    where = "" if path.is_absolute() else f" (looked for in {Path.cwd()})"
    return f"{option}: {path}: file not found{where}"


def read_lines(path: str | Path, option: str = "data.predict_file") -> Dataset:
    """One text per line of a UTF-8 file (trailing newline stripped, empty lines kept), as a
    ``Dataset`` with one column, ``text``.

    Raises:
        DataFileError: the file is missing or not valid UTF-8 (with the line).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataFileError(not_found(option, path))
    return Dataset.from_dict({"text": split_lines(path, path.read_bytes())})


def check_columns(table: Table, needed: dict[str, str], hint: str | None = None) -> None:
    """Refuse a table without the columns ``needed`` (column -> the option that names it).

    ``hint`` ends the message (``None``: which option to set to another column).

    Raises:
        DataFileError: ``path, line 1`` (TSV/CSV) naming the missing columns and listing those that exist.
    """
    columns = table.column_names
    missing = [c for c in needed if c not in columns]
    if missing:
        options = ", ".join(f"{needed[c]}={c!r}" for c in missing)
        looks_like_data = any(not c.strip() or DIGITS.fullmatch(c.strip()) or c.count(" ") >= 3 for c in columns)
        headerless = (f"; no header row? name the columns with {option('data', 'column_names')} "
                      f"[{', '.join(['text', 'label', 'id', 'col4', 'col5'][:len(columns)])}]"
                      if table.text_format and looks_like_data else "")
        raise DataFileError(f"{table.header_where()}: missing column(s) {missing} in header {columns}"
                            f"{hint if hint is not None else f' ({options}: name one of these columns{headerless})'}")


def check_text(table: Table, column: str) -> None:
    """Every value of ``column`` is text (a string; empty is allowed).

    Raises:
        DataFileError: the first row whose value is not a string (a number, null, a list), with it.
    """
    for i, value in enumerate(table[column]):
        if not isinstance(value, str):
            raise DataFileError(f"{table.where(i)}: column {column!r} holds {value!r} ({type(value).__name__}), "
                                "expected text")


def label_kind(value) -> str | None:
    """``integer`` (an int, or text of a plain integer: ``7``, ``-3``), ``code`` (digits with a leading zero:
    ``01``), ``text`` (any other non-empty string), ``None`` for anything else (float, bool, null, list)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return "integer"
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    return "integer" if INTEGER.fullmatch(value) else "code" if DIGITS.fullmatch(value) else "text"


def label_values(table: Table, column: str) -> list[int | str]:
    """The labels of ``column``, one type for the whole column, compared across files as text.

    The rule, whatever the format: a column whose every label is a plain integer (a JSON/Parquet integer,
    or text such as ``7`` or ``-3``) gives integers (``"7"`` and ``7`` are one class); otherwise strings,
    stripped, exactly as written: ``01`` and ``1`` are two classes, and a column of digit codes such as
    ``01``, ``02``, ``10`` stays text.

    Raises:
        DataFileError: naming the line and value: an empty or missing label; a float, boolean or list;
            a column that mixes integers (or digit codes) and words, pointing at a row of the rarer kind.
    """
    values = table[column]
    kinds = []
    for i, value in enumerate(values):
        kind = label_kind(value)
        if kind is None:
            if value is None or isinstance(value, str):
                raise DataFileError(f"{table.where(i)}: empty label in column {column!r}")
            raise DataFileError(f"{table.where(i)}: label {value!r} ({type(value).__name__}) in column {column!r}: "
                                "expected an integer or a string")
        kinds.append(kind)
    numeric = [k != "text" for k in kinds]
    if any(numeric) and not all(numeric):
        odd = numeric.count(True) < numeric.count(False)  # the rarer kind is the row to look at
        i, j = numeric.index(odd), numeric.index(not odd)
        what = lambda k: "a number" if k else "a word"  # noqa: E731
        raise DataFileError(f"{table.where(i)}: label {values[i]!r} is {what(odd)}, but {numeric.count(not odd):,} other "
                            f"labels of column {column!r} are {'numbers' if not odd else 'words'} (e.g. {table.where(j)}: "
                            f"{values[j]!r}): a label column holds numbers or words, not both; fix or drop this row")
    if all(k == "integer" for k in kinds):
        return [int(v) for v in values]
    return [str(v).strip() for v in values]


def encode_labels(table: Table, values: list[int | str], label2id: dict, known: str) -> list[int]:
    """``values`` as class ids, matched by their text (``str(value)``): an integer ``1`` and a string ``"1"``
    are one class.

    Args:
        table: where the values came from (for errors).
        values: ``label_values``' output.
        label2id: label (value or its text) -> class id.
        known: how to say which labels are allowed, e.g. ``"0 or 1"``.

    Raises:
        DataFileError: the first value not in ``label2id``, naming its line/row, what to do, and, when the
            file's labels are of another type than ``label2id``'s (text vs integers), that the types differ.
    """
    by_text = {str(k): v for k, v in label2id.items()}
    ids = []
    for i, value in enumerate(values):
        if str(value) not in by_text:
            ours = {type(v) for v in values}
            theirs = {type(k) for k in label2id}
            types = ""
            if ours != theirs and len(ours) == len(theirs) == 1:
                name = {int: "integers", str: "text"}
                types = (f"; the types differ: these labels are {name[ours.pop()]}, those are "
                         f"{name[theirs.pop()]} (01 is not 1)")
            raise DataFileError(f"{table.where(i)}: label {value!r} is not {known}{types}: add rows with it to the "
                                "train file, or map it to one of those labels (or drop the row)")
        ids.append(by_text[str(value)])
    return ids
