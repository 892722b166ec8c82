"""Reading and checking labeled text files (tables.py): every format, every error in one line, at the line
an editor shows."""

import csv
import json

import pandas as pd
import pytest

from lora_lightning.errors import DataFileError
from lora_lightning.tables import (check_columns, check_text, encode_labels, label_values, read_lines, read_table,
                                   tsv_dialect)


def test_csv_keeps_every_field_as_text(tmp_path):
    """CSV quoting as RFC 4180 defines it; NA, null and empty stay text; 007 stays 007 as text; a quoted
    field over two lines is one row, and the next row's line is the one after it."""
    path = tmp_path / "t.csv"
    path.write_text('text,label,code\n"a, ""quoted"" text",1,007\nNA,2,null\n"two\nlines",1,\nlast,2,x\n')
    table = read_table(path, "data.train_file")
    assert table.columns == {"text": ['a, "quoted" text', "NA", "two\nlines", "last"], "label": ["1", "2", "1", "2"],
                             "code": ["007", "null", "", "x"]}
    assert label_values(table, "label") == [1, 2, 1, 2]  # every value a plain integer: integer labels
    assert [table.where(i) for i in range(4)] == [f"{path}, line {n}" for n in (2, 3, 4, 6)]


def test_jsonl_json_parquet_keep_their_types(tmp_path):
    rows = [{"text": "fine", "label": "pos"}, {"text": "bad", "label": "neg"}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "t.json").write_text(json.dumps(rows))
    pd.DataFrame({"text": ["fine", "bad"], "label": [3, 1]}).to_parquet(tmp_path / "t.parquet")
    for name in ("t.jsonl", "t.json"):
        table = read_table(tmp_path / name, "data.train_file")
        assert table["text"] == ["fine", "bad"] and label_values(table, "label") == ["pos", "neg"]
    parquet = read_table(tmp_path / "t.parquet", "data.train_file")
    assert label_values(parquet, "label") == [3, 1] and parquet.where(1) == f"{tmp_path / 't.parquet'}, row 2"


def test_json_rows_are_named_by_the_line_they_start_on(tmp_path):
    """JSON lines: blank lines are skipped and counted; a pretty-printed array: each object's first line."""
    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": 0}\n')
    assert read_table(tmp_path / "t.jsonl", "x").lines == [1, 3]
    (tmp_path / "t.json").write_text(json.dumps([{"text": "a", "label": 1}, {"text": "b", "label": 0}], indent=2))
    table = read_table(tmp_path / "t.json", "x")
    assert table.lines == [2, 6] and table.where(1) == f"{tmp_path / 't.json'}, line 6"


def test_file_replaced_in_place_is_read_again(tmp_path):
    """No cache keyed on path or mtime (C19): the same path with new bytes gives the new rows."""
    path = tmp_path / "t.csv"
    path.write_text("text,label\na,1\n")
    assert read_table(path, "x")["text"] == ["a"]
    path.write_text("text,label\nb,1\n")
    assert read_table(path, "x")["text"] == ["b"]


def test_tsv_lines_and_text_lines(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text('sentence\tlabel\nsays "hi"\t1\nbare\rcr\t0\n')
    table = read_table(path, "data.train_file")
    assert table["sentence"] == ['says "hi"', "bare\rcr"] and table.where(1) == f"{path}, line 3"
    (tmp_path / "p.txt").write_text("one\n\nthree\n")
    assert read_lines(tmp_path / "p.txt")["text"] == ["one", "", "three"]


# C27: the TSV dialects users have, next to GLUE's unquoted files.
REVIEWS = [("Fine book.\n\tRead it twice.", 1), ('A "so-so" read', 0), ("Plain text, no quotes", 1), ("Bad.", 0)]


@pytest.mark.parametrize("writer", ["pandas", "excel-tab", "quote-all"])
def test_quoted_tsv_dialects_read_as_pandas_reads_them(tmp_path, writer):
    """C27: pandas' to_csv(sep='\\t'), Python's excel-tab and a spreadsheet export that quotes every text
    field: one row per record, the text without the enclosing quotes, tabs and line breaks kept; a row after
    a two-line record is named by its own line."""
    path = tmp_path / "reviews.tsv"
    if writer == "pandas":
        pd.DataFrame(REVIEWS, columns=["sentence", "label"]).to_csv(path, sep="\t", index=False)
    else:
        with path.open("w", newline="") as f:
            w = csv.writer(f, dialect="excel-tab", quoting=csv.QUOTE_NONNUMERIC if writer == "quote-all" else csv.QUOTE_MINIMAL)
            w.writerow(["sentence", "label"])
            w.writerows(REVIEWS)
    expected = pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)
    quoting = "csv" if writer == "quote-all" else "auto"  # every field quoted, none needing it: ambiguous (below)
    table = read_table(path, "data.train_file", tsv_quoting=quoting)
    assert table["sentence"] == list(expected["sentence"]) == [r[0] for r in REVIEWS]
    assert label_values(table, "label") == [1, 0, 1, 0]
    assert table.lines == [2, 4, 5, 6]


def test_glue_tsv_keeps_its_literal_quotes(tmp_path):
    """C05 stays true under auto: GLUE's unquoted TSV (a field may start or end with a lone '"') is read
    as written; 4 rows, nothing merged."""
    path = tmp_path / "bad_quotes.tsv"
    rows = [('" the movie is a mess ', 0), ('a "wonderful" ride ', 1), ("it 's \" ", 0), ("fine ", 1)]
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    for quoting in ("auto", "none"):
        table = read_table(path, "data.train_file", tsv_quoting=quoting)
        assert table["sentence"] == [s for s, _ in rows] and label_values(table, "label") == [0, 1, 0, 1]
    assert tsv_dialect(path, path.read_text()) == "none"


def test_ambiguous_tsv_asks_for_the_option(tmp_path):
    """Both readings valid and different, nothing showing the quoting: one error naming the line, both readings
    and data.tsv_quoting; each value of the option then reads the file its way."""
    path = tmp_path / "t.tsv"
    path.write_text('sentence\tlabel\nplain\t1\n"great"\t1\n')
    with pytest.raises(DataFileError, match=r"t.tsv, line 3: the field '\"great\"' reads as 'great' with TSV quoting .*"
                                            r"--data.tsv_quoting csv or --data.tsv_quoting none"):
        read_table(path, "data.train_file")
    assert read_table(path, "x", tsv_quoting="csv")["sentence"] == ["plain", "great"]
    assert read_table(path, "x", tsv_quoting="none")["sentence"] == ["plain", '"great"']


def test_quoted_tsv_errors_name_the_editor_line(tmp_path):
    """A row with a missing field after a two-line record: the error names the line it starts on (5)."""
    path = tmp_path / "t.tsv"
    path.write_text('sentence\tlabel\n"two\nlines"\t1\nok\t0\nmissing its label\n')
    with pytest.raises(DataFileError, match=r"t.tsv, line 5: 1 tab-separated fields, expected 2"):
        read_table(path, "data.train_file")


@pytest.mark.parametrize("name, content, message", [
    ("t.xlsx", "", r"data.train_file: .*t.xlsx: unknown file type '.xlsx' \(expected .tsv, .csv, .jsonl, .json, .parquet\)"),
    ("t.csv", "", r"t.csv: file is empty"),
    ("t.csv", "text,label\n\xff,1\n", r"t.csv, line 2: not valid UTF-8"),
    ("t.csv", "text,label\na,1\nb,2,3\n", r"t.csv, line 3: 3 comma-separated fields, expected 2"),
    ("t.jsonl", '{"text": "a", "label": 1}\n{"text": \n', r"t.jsonl, line 2: cannot be read as JSON"),
    ("t.jsonl", '{"text": "a", "label": 1}\n[1, 2]\n', r"t.jsonl, line 2: list where a JSON object"),
])
def test_unreadable_files_name_the_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff"))
    with pytest.raises(DataFileError, match=message):
        read_table(path, "data.train_file")


def test_file_not_found_names_the_folder_looked_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataFileError, match=rf"data.train_file: nope.csv: file not found \(looked for in {tmp_path}\)$"):
        read_table("nope.csv", "data.train_file")
    with pytest.raises(DataFileError, match=r"data.train_file: /.*/nope.csv: file not found$"):
        read_table(tmp_path / "nope.csv", "data.train_file")


def test_missing_column_lists_the_columns(tmp_path):
    (tmp_path / "t.csv").write_text("review,stars\nfine,5\n")
    (tmp_path / "t.jsonl").write_text('{"review": "fine", "stars": 5}\n')
    with pytest.raises(DataFileError, match=r"t.csv, line 1: missing column\(s\) \['text'\] in header \['review', 'stars'\] "
                                            r"\(data.text_column='text': name one of these columns\)$"):
        check_columns(read_table(tmp_path / "t.csv", "x"), {"text": "data.text_column", "stars": "data.label_column"})
    with pytest.raises(DataFileError, match=r"t.jsonl: missing column\(s\) \['label'\] in header \['review', 'stars'\]"):
        check_columns(read_table(tmp_path / "t.jsonl", "x"), {"review": "data.text_column", "label": "data.label_column"})


@pytest.mark.parametrize("name, content, message", [
    # a column mixing numbers and words: the error points at the rarer kind's row, whichever comes first
    ("t.csv", "text,label\na,1\nb,2\nc,pos\nd,1\n", r"t.csv, line 4: label 'pos' is a word, but 3 other labels .* are numbers \(e.g. .*t.csv, line 2: '1'\)"),
    ("t.csv", "text,label\na,1\nb,pos\nc,neg\nd,neg\n", r"t.csv, line 2: label '1' is a number, but 3 other labels .* are words"),
    ("t.tsv", "text\tlabel\na\t0\nb\tneutral\nc\t1\n", r"t.tsv, line 3: label 'neutral' is a word"),
    ("t.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n\n{"text": "c", "label": "pos"}\n', r"t.jsonl, line 4: label 'pos' is a word"),
    ("t.jsonl", '{"text": "a", "label": "pos"}\n{"text": "b", "label": null}\n', r"t.jsonl, line 2: empty label in column 'label'"),
    ("t.jsonl", '{"text": "a", "label": 0.5}\n{"text": "b", "label": 1.5}\n', r"t.jsonl, line 1: label 0.5 \(float\) in column 'label': expected an integer or a string"),
    ("t.csv", "text,label\na,pos\nb,\n", r"t.csv, line 3: empty label"),
])
def test_bad_labels_name_line_and_value(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataFileError, match=message):
        label_values(read_table(tmp_path / name, "data.train_file"), "label")


def test_label_codes_stay_as_written(tmp_path):
    """C23: 01, 02, 10 are codes, not the integers 1, 2, 10; 1 and 01 are two classes; plain integers stay
    integers (a CSV 7 and a JSON 7)."""
    (tmp_path / "codes.csv").write_text("text,label\na,01\nb,02\nc,10\nd,1\n")
    assert label_values(read_table(tmp_path / "codes.csv", "x"), "label") == ["01", "02", "10", "1"]
    (tmp_path / "ints.csv").write_text("text,label\na,7\nb,-3\nc, 10 \n")
    assert label_values(read_table(tmp_path / "ints.csv", "x"), "label") == [7, -3, 10]
    (tmp_path / "codes.jsonl").write_text('{"text": "a", "label": "007"}\n{"text": "b", "label": 7}\n')
    assert label_values(read_table(tmp_path / "codes.jsonl", "x"), "label") == ["007", "7"]


def test_labels_match_across_formats_by_their_text(tmp_path):
    """A CSV 0 and a JSON "0" (and a JSON 0) are one class; a code 01 is not the integer 1, and the error
    says the types differ."""
    (tmp_path / "dev.jsonl").write_text('{"text": "a", "label": "0"}\n{"text": "b", "label": 1}\n')
    table = read_table(tmp_path / "dev.jsonl", "data.validation_file")
    assert encode_labels(table, label_values(table, "label"), {0: 0, 1: 1}, "one of [0, 1]") == [0, 1]
    (tmp_path / "codes.csv").write_text("text,label\na,01\nb,00\n")
    codes = read_table(tmp_path / "codes.csv", "data.validation_file")
    with pytest.raises(DataFileError, match=r"codes.csv, line 2: label '01' is not one of \[0, 1\]; the types differ: "
                                            r"these labels are text, those are integers"):
        encode_labels(codes, label_values(codes, "label"), {0: 0, 1: 1}, "one of [0, 1]")


def test_text_column_that_is_not_text(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text": "fine", "label": 1}\n{"text": 42, "label": 0}\n')
    pd.DataFrame({"text": [1.5, 2.5], "label": [0, 1]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataFileError, match=r"t.jsonl, line 2: column 'text' holds 42 \(int\), expected text"):
        check_text(read_table(tmp_path / "t.jsonl", "x"), "text")
    with pytest.raises(DataFileError, match=r"t.parquet, row 1: column 'text' holds 1.5 \(float\), expected text"):
        check_text(read_table(tmp_path / "t.parquet", "x"), "text")


def test_unknown_label_says_what_to_do(tmp_path):
    (tmp_path / "dev.tsv").write_text("text\tlabel\na\tpos\nb\tmaybe\n")
    table = read_table(tmp_path / "dev.tsv", "data.validation_file")
    with pytest.raises(DataFileError, match=r"dev.tsv, line 3: label 'maybe' is not one of \['neg', 'pos'\]: add rows with "
                                            r"it to the train file, or map it to one of those labels \(or drop the row\)$"):
        encode_labels(table, label_values(table, "label"), {"neg": 0, "pos": 1}, "one of ['neg', 'pos']")


def test_a_field_longer_than_the_csv_modules_limit_is_read(tmp_path):
    """C29: a whole document in one cell (200,000 characters, over csv's 131,072 default) is a valid field, in a
    CSV and in a quoted TSV; the limit is Python's again after the read."""
    long = "good film " * 20_000
    with open(tmp_path / "long.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text", "label"], ["short", "0"], [long, "1"]])
    pd.DataFrame({"text": ["a \"quoted\" one", long], "label": [0, 1]}).to_csv(tmp_path / "long.tsv", sep="\t", index=False)
    before = csv.field_size_limit()
    for name in ("long.csv", "long.tsv"):
        table = read_table(tmp_path / name, "data.train_file")
        assert table["text"][1] == long and len(table) == 2
    assert csv.field_size_limit() == before


def test_classic_mac_line_ends_are_line_ends(tmp_path):
    """A CSV or TSV whose lines end in CR alone (no LF anywhere) reads as the same rows as with LF; errors name the
    line an editor shows."""
    (tmp_path / "mac.csv").write_bytes(b"text,label\rgood film,1\rbad film,0\r")
    (tmp_path / "mac.tsv").write_bytes(b"sentence\tlabel\rgood film\t1\rbad film\t0\r")
    for name, column in (("mac.csv", "text"), ("mac.tsv", "sentence")):
        table = read_table(tmp_path / name, "data.train_file")
        assert table[column] == ["good film", "bad film"] and table["label"] == ["1", "0"] and table.lines == [2, 3]
    (tmp_path / "bad.csv").write_bytes(b"text,label\rgood film,1\rbad film\r")
    with pytest.raises(DataFileError, match=r"bad.csv, line 3: 1 comma-separated fields, expected 2"):
        read_table(tmp_path / "bad.csv", "data.train_file")


def test_lone_surrogates_in_json_are_replaced_and_said(tmp_path):
    """C30: JSON's "\\ud83d" (half an emoji) is accepted by json but is no character: replaced by U+FFFD, the row
    kept, and a note names the file and the line of the first."""
    lines = ['{"text": "fine", "label": 1}', '{"text": "ok", "label": 0}', '{"text": "great \\ud83d", "label": 1}',
             '{"text": "\\ud83d\\ude00 whole", "label": 1}', '{"text": "bad \\udc00", "label": 0}']
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    table = read_table(tmp_path / "t.jsonl", "data.train_file")
    assert table["text"] == ["fine", "ok", "great \ufffd", "\U0001F600 whole", "bad \ufffd"]
    assert table.notes == [f"{tmp_path / 't.jsonl'}, line 3: a lone UTF-16 surrogate (half of a character, e.g. an emoji "
                           "cut by a length limit) replaced by U+FFFD (and 1 more rows); the rows are kept"]
    table.dataset(["text"])  # Arrow takes every text now
