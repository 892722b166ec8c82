"""Reading and checking labeled text files (tables.py): every format, every error in one line."""

import json

import pandas as pd
import pytest

from lora_lightning.errors import DataFileError
from lora_lightning.tables import check_columns, check_text, encode_labels, label_values, read_lines, read_table


def test_csv_keeps_every_field_as_text(tmp_path):
    """CSV quoting as RFC 4180 defines it; NA, null and empty stay text; 007 stays 007 as text."""
    path = tmp_path / "t.csv"
    path.write_text('text,label,code\n"a, ""quoted"" text",1,007\nNA,2,null\n"two\nlines",1,\n')
    table = read_table(path, "data.train_file")
    assert table.rows[:] == {"text": ['a, "quoted" text', "NA", "two\nlines"], "label": ["1", "2", "1"],
                             "code": ["007", "null", ""]}
    assert label_values(table, "label") == [1, 2, 1]  # every value an integer: integer labels
    assert table.where(0) == f"{path}, row 1"


def test_jsonl_json_parquet_keep_their_types(tmp_path):
    rows = [{"text": "fine", "label": "pos"}, {"text": "bad", "label": "neg"}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "t.json").write_text(json.dumps(rows))
    pd.DataFrame({"text": ["fine", "bad"], "label": [3, 1]}).to_parquet(tmp_path / "t.parquet")
    for name in ("t.jsonl", "t.json"):
        table = read_table(tmp_path / name, "data.train_file")
        assert table.rows["text"] == ["fine", "bad"] and label_values(table, "label") == ["pos", "neg"]
    assert label_values(read_table(tmp_path / "t.parquet", "data.train_file"), "label") == [3, 1]


def test_file_replaced_in_place_is_read_again(tmp_path):
    """No cache keyed on path or mtime (C19): the same path with new bytes gives the new rows."""
    path = tmp_path / "t.csv"
    path.write_text("text,label\na,1\n")
    assert read_table(path, "x").rows["text"] == ["a"]
    path.write_text("text,label\nb,1\n")
    assert read_table(path, "x").rows["text"] == ["b"]


def test_tsv_lines_and_text_lines(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text('sentence\tlabel\nsays "hi"\t1\nbare\rcr\t0\n')
    table = read_table(path, "data.train_file")
    assert table.rows["sentence"] == ['says "hi"', "bare\rcr"] and table.where(1) == f"{path}, line 3"
    (tmp_path / "p.txt").write_text("one\n\nthree\n")
    assert read_lines(tmp_path / "p.txt")["text"] == ["one", "", "three"]


@pytest.mark.parametrize("name, content, message", [
    ("t.xlsx", "", r"data.train_file: .*t.xlsx: unknown file type '.xlsx' \(expected .tsv, .csv, .jsonl, .json, .parquet\)"),
    ("t.csv", "", r"t.csv: file is empty"),
    ("t.csv", "text,label\n\xff,1\n", r"t.csv: not valid UTF-8"),
    ("t.jsonl", '{"text": "a", "label": 1}\n{"text": \n', r"t.jsonl: cannot be read as JSON"),
])
def test_unreadable_files_name_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff"))
    with pytest.raises(DataFileError, match=message):
        read_table(path, "data.train_file")
    with pytest.raises(DataFileError, match=r"data.train_file: .*nope.csv: file not found"):
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
    ("t.csv", "text,label\na,1\nb,pos\n", r"t.csv, row 2: label 'pos' is text but .*t.csv, row 1 has the integer label '1'"),
    ("t.tsv", "text\tlabel\na\t0\nb\tneutral\n", r"t.tsv, line 3: label 'neutral' is text but .*t.tsv, line 2 has the integer"),
    ("t.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": "pos"}\n', r"t.jsonl, row 2: label 'pos' is a string but earlier rows"),
    ("t.jsonl", '{"text": "a", "label": "pos"}\n{"text": "b", "label": null}\n', r"t.jsonl, row 2: empty label in column 'label'"),
    ("t.jsonl", '{"text": "a", "label": 0.5}\n{"text": "b", "label": 1.5}\n', r"t.jsonl, row 1: label 0.5 \(float\) in column 'label': expected an integer or a string"),
    ("t.csv", "text,label\na,pos\nb,\n", r"t.csv, row 2: empty label"),
])
def test_bad_labels_name_row_and_value(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataFileError, match=message):
        label_values(read_table(tmp_path / name, "data.train_file"), "label")


def test_text_column_that_is_not_text(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text": "fine", "label": 1}\n{"text": 42, "label": 0}\n')
    pd.DataFrame({"text": [1.5, 2.5], "label": [0, 1]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataFileError, match=r"t.jsonl, row 2: column 'text' holds 42 \(int\), expected text"):
        check_text(read_table(tmp_path / "t.jsonl", "x"), "text")
    with pytest.raises(DataFileError, match=r"t.parquet, row 1: column 'text' holds 1.5 \(float\), expected text"):
        check_text(read_table(tmp_path / "t.parquet", "x"), "text")


def test_unknown_label_names_line_and_value(tmp_path):
    (tmp_path / "dev.tsv").write_text("text\tlabel\na\tpos\nb\tmaybe\n")
    table = read_table(tmp_path / "dev.tsv", "data.validation_file")
    with pytest.raises(DataFileError, match=r"dev.tsv, line 3: label 'maybe' is not one of \['neg', 'pos'\]$"):
        encode_labels(table, label_values(table, "label"), {"neg": 0, "pos": 1}, "one of ['neg', 'pos']")
