"""SST2DataModule (data.py): sources, split sizes and determinism, tokenisation, batching, bad files."""

from pathlib import Path

import pytest
import torch

from conftest import write_tsv
from lora_lightning.data import DataFileError, EpochLengthGroupedSampler, SST2DataModule, read_split


def make_dm(model_dir, data_dir, **kw) -> SST2DataModule:
    dm = SST2DataModule(model_name_or_path=model_dir, data_dir=data_dir, **kw)
    dm.setup("fit")
    return dm


def test_toy_split_sizes_and_seeded(tiny_model_dir, toy_glue_dir):
    dm = make_dm(tiny_model_dir, toy_glue_dir, val_fraction=0.1, seed=1)
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 180, "val": 20, "test": 40, "predict": 10}
    val = dm.datasets["val"]
    again = make_dm(tiny_model_dir, toy_glue_dir, val_fraction=0.1, seed=1)
    assert again.datasets["val"]["input_ids"] == val["input_ids"]
    other = make_dm(tiny_model_dir, toy_glue_dir, val_fraction=0.1, seed=2)
    assert other.datasets["val"]["input_ids"] != val["input_ids"]


def test_batches_are_padded_per_batch(tiny_model_dir, toy_glue_dir):
    dm = make_dm(tiny_model_dir, toy_glue_dir, batch_size=8, eval_batch_size=16)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape[0] == 8 and batch["labels"].dtype == torch.long
    # padded to the longest in the batch, not to max_length=128
    assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max()) < 128
    assert batch["input_ids"][0, 0] == dm.tokenizer.cls_token_id
    assert dm.tokenizer.unk_token_id not in batch["input_ids"]  # the tiny vocab covers the toy words
    val = next(iter(dm.val_dataloader()))
    assert val["input_ids"].shape[0] == 16


def test_real_sst2_sizes_and_split(glue_dir, packaged_model):
    """GLUE train 67,349 -> 60,614 train / 6,735 val; dev 872 is the test stage; test 1,821 is predict."""
    dm = make_dm(packaged_model, glue_dir)
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 60_614, "val": 6_735, "test": 872, "predict": 1_821}
    raw = read_split(Path(glue_dir) / "train.tsv", labeled=True)
    split = raw.train_test_split(test_size=0.1, seed=42)
    # same split for the same seed, sentence for sentence
    assert dm.datasets["val"]["input_ids"][:50] == [
        dm.tokenizer(s, truncation=True, max_length=128)["input_ids"] for s in split["test"]["sentence"][:50]
    ]
    labels = dm.datasets["test"]["labels"]
    assert sum(labels) == 444  # GLUE dev: 444 positive of 872


def test_length_grouping_cuts_padding(glue_dir, packaged_model):
    dm = make_dm(packaged_model, glue_dir, max_train_samples=6400)
    lengths = dm.datasets["train"]["length"]
    sampler = EpochLengthGroupedSampler(32, lengths, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(6400))  # a permutation: every sentence once
    padded = lambda idx: sum(32 * max(lengths[i] for i in idx[k:k + 32]) for k in range(0, len(idx), 32))  # noqa: E731
    real = sum(lengths)
    random_order = torch.randperm(6400, generator=torch.Generator().manual_seed(0)).tolist()
    assert padded(order) < 1.15 * real < padded(random_order) / 1.8
    sampler.set_epoch(1)
    assert list(sampler) != order
    sampler.set_epoch(0)
    assert list(sampler) == order  # the order depends only on (seed, epoch)


def test_literal_na_strings_stay_sentences(tmp_path):
    """C06: null/NA/nan/None/true/false are sentences, not missing values or booleans; empty is kept."""
    words = ["null ", "nan", "NA", "None", "true", "false", ""]
    path = write_tsv(tmp_path / "train.tsv", "sentence\tlabel", [(w, i % 2) for i, w in enumerate(words)])
    ds = read_split(path, labeled=True)
    assert list(ds["sentence"]) == words and list(ds["label"]) == [0, 1, 0, 1, 0, 1, 0]
    only_bool = write_tsv(tmp_path / "dev.tsv", "sentence\tlabel", [("true", 1), ("false", 0)])
    assert list(read_split(only_bool, labeled=True)["sentence"]) == ["true", "false"]


def test_quotes_are_text_not_quoting(tmp_path):
    """C05 (pytorch/text #349): a leading double quote does not swallow tabs or lines."""
    path = tmp_path / "bad_quotes.tsv"
    path.write_text('sentence\tlabel\n" the movie is a mess \t0\na "wonderful" ride \t1\nit \'s " \t0\nfine \t1\n')
    ds = read_split(path, labeled=True)
    assert list(ds["sentence"]) == ['" the movie is a mess ', 'a "wonderful" ride ', "it 's \" ", "fine "]
    assert list(ds["label"]) == [0, 1, 0, 1]


def test_crlf_and_bom_read_like_lf(tmp_path):
    rows = "sentence\tlabel\nit 's fine \t1\nawful \t0\n"
    (tmp_path / "lf.tsv").write_text(rows)
    (tmp_path / "crlf.tsv").write_bytes(b"\xef\xbb\xbf" + rows.replace("\n", "\r\n").encode())
    lf, crlf = read_split(tmp_path / "lf.tsv", True), read_split(tmp_path / "crlf.tsv", True)
    assert lf[:] == crlf[:] == {"sentence": ["it 's fine ", "awful "], "label": [1, 0]}


def test_unlabeled_dev_points_to_predict(tmp_path, tiny_model_dir):
    """C04 (datasets #245): a split without labels never reaches the loss; the error says what to do."""
    write_tsv(tmp_path / "train.tsv", "sentence\tlabel", [("fine", 1)] * 20)
    write_tsv(tmp_path / "dev.tsv", "index\tsentence", [(0, "fine"), (1, "bad"), (2, "ok")])
    with pytest.raises(DataFileError, match=r"dev.tsv, line 1: missing column\(s\) \['label'\].*use `predict`"):
        make_dm(tiny_model_dir, str(tmp_path))


@pytest.mark.parametrize(
    "content, message",
    [
        ("", r"train.tsv: file is empty"),
        ("text\tlabel\nfine\t1\n", r"train.tsv, line 1: missing column\(s\) \['sentence'\]"),
        ("sentence\tlabel\nfine\t1\nbad\t-1\n", r"train.tsv, line 3: label '-1' is not 0 or 1"),
        ("sentence\tlabel\nfine\t1\nbad\t0\textra\n", r"train.tsv, line 3: 3 tab-separated fields, expected 2"),
        ("sentence\tlabel\nfine\t1\nno label here\n", r"train.tsv, line 3: 1 tab-separated fields, expected 2"),
        ("sentence\tlabel\nfine\t1\nbad \xff\t0\n", r"train.tsv, line 3: not valid UTF-8"),
        ("\n\n", r"train.tsv: file is empty"),
        ("sentence\tlabel\n", r"train.tsv: has a header but no rows"),
        ("fine\t1\nbad\t0\n", r"train.tsv, line 1: missing column\(s\) \['sentence', 'label'\] in header \['fine', '1'\]"),
        ("sentence\tlabel\nfine\t1\nbad\t2\n", r"train.tsv, line 3: label '2' is not 0 or 1"),
        ("sentence\tlabel\nfine\t1\nbad\tneg\n", r"train.tsv, line 3: label 'neg' is not 0 or 1"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, tiny_model_dir, content, message):
    (tmp_path / "train.tsv").write_bytes(content.encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff"))
    write_tsv(tmp_path / "dev.tsv", "sentence\tlabel", [("fine", 1)])
    with pytest.raises(DataFileError, match=message):
        make_dm(tiny_model_dir, str(tmp_path))


def test_missing_folder_and_file(tmp_path, tiny_model_dir):
    with pytest.raises(DataFileError, match=r"data.data_dir: SST-2 folder .*nope does not exist"):
        make_dm(tiny_model_dir, str(tmp_path / "nope"))
    write_tsv(tmp_path / "train.tsv", "sentence\tlabel", [("fine", 1)])
    with pytest.raises(DataFileError, match=r"dev.tsv: file not found"):
        make_dm(tiny_model_dir, str(tmp_path))


def test_glue_dir_env_is_the_fallback(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    with pytest.raises(DataFileError, match=r"GLUE_DIR: SST-2 folder .*SST-2 does not exist"):
        make_dm(tiny_model_dir, None)


@pytest.mark.parametrize("kw, message", [
    ({"val_fraction": 0.0}, r"data.val_fraction must be in \(0, 1\)"),
    ({"val_fraction": 1.0}, r"data.val_fraction must be in \(0, 1\)"),
    ({"max_length": 1}, r"data.max_length must be >= 2"),
])
def test_bad_options(kw, message):
    with pytest.raises(ValueError, match=message):
        SST2DataModule(**kw)


def test_max_length_above_model_limit(tiny_model_dir, toy_glue_dir):
    with pytest.raises(ValueError, match=r"data.max_length=1000 exceeds the model's limit of 512"):
        make_dm(tiny_model_dir, toy_glue_dir, max_length=1000)
