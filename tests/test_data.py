"""SST2DataModule (data.py): sources, split sizes and determinism, tokenisation, batching, bad files."""

import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertModel, BertTokenizerFast, DistilBertConfig, RobertaConfig

from conftest import FILLER, NEGATIVE, POSITIVE, SPECIAL, tiny_config, toy_rows, write_tsv
from lora_lightning.cli import main
from lora_lightning.data import (DataFileError, EpochLengthGroupedSampler, OptionError, SST2DataModule,
                                 model_token_limit, read_split)

ROOT = Path(__file__).resolve().parents[1]


def make_dm(model_dir, data_dir, **kw) -> SST2DataModule:
    dm = SST2DataModule(model_name_or_path=model_dir, data_dir=data_dir, **kw)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("val_split", ["by_sentence", "random"])
def test_toy_split_sizes_and_seeded(tiny_model_dir, toy_glue_dir, val_split):
    """Either split: every train row on one side, at least val_fraction of them in val, the same for the same
    seed and another for another; the random split is datasets' train_test_split, 180 / 20."""
    dm = make_dm(tiny_model_dir, toy_glue_dir, val_fraction=0.1, seed=1, val_split=val_split)
    dm.setup("predict")
    sizes = {k: len(v) for k, v in dm.datasets.items()}
    assert sizes["train"] + sizes["val"] == 200 and sizes["val"] >= 20 and (sizes["test"], sizes["predict"]) == (40, 10)
    if val_split == "random":
        assert sizes["val"] == 20
    val = dm.datasets["val"]
    again = make_dm(tiny_model_dir, toy_glue_dir, val_fraction=0.1, seed=1, val_split=val_split)
    assert again.datasets["val"]["input_ids"] == val["input_ids"]
    other = make_dm(tiny_model_dir, toy_glue_dir, val_fraction=0.1, seed=2, val_split=val_split)
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
    """The seed's random split (data.val_split=random): GLUE train 67,349 -> 60,614 train / 6,735 val, datasets'
    train_test_split sentence for sentence; dev 872 is the test stage; test 1,821 is predict."""
    dm = make_dm(packaged_model, glue_dir, val_split="random")
    dm.setup("predict")
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 60_614, "val": 6_735, "test": 872, "predict": 1_821}
    raw = read_split(Path(glue_dir) / "train.tsv", labeled=True)
    split = raw.train_test_split(test_size=0.1, seed=42)
    # same split for the same seed, sentence for sentence
    assert dm.datasets["val"]["input_ids"][:50] == [
        dm.tokenizer(s, truncation=True, max_length=128)["input_ids"] for s in split["test"]["sentence"][:50]
    ]
    labels = dm.datasets["test"]["labels"]
    assert sum(labels) == 444  # GLUE dev: 444 positive of 872


def test_sorted_length_batches_cut_padding_further(glue_dir, packaged_model):
    """length_grouping=sorted: padding within 2% of the real tokens on real SST-2 (megabatch: ~10%),
    every sentence once, a new order each epoch, the same for the same (seed, epoch), the short batch last."""
    from lora_lightning.data import SortedLengthBatchSampler

    lengths = make_dm(packaged_model, glue_dir, max_train_samples=6400 + 5).datasets["train"]["length"]
    sampler = SortedLengthBatchSampler(32, lengths, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(6405)) and len(sampler) == 6405
    batches = [order[k:k + 32] for k in range(0, len(order), 32)]
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.02 * sum(lengths)
    assert len(batches[-1]) == 5 and all(len(b) == 32 for b in batches[:-1])
    longest = [max(lengths[i] for i in b) for b in batches[:-1]]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)  # batch order shuffled
    sampler.set_epoch(1)
    assert list(sampler) != order
    sampler.set_epoch(0)
    assert list(sampler) == order


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
    with pytest.raises(DataFileError, match=r"^data_dir: SST-2 folder .*nope does not exist"):
        make_dm(tiny_model_dir, str(tmp_path / "nope"))
    write_tsv(tmp_path / "train.tsv", "sentence\tlabel", [("fine", 1)])
    with pytest.raises(DataFileError, match=r"dev.tsv: file not found"):
        make_dm(tiny_model_dir, str(tmp_path))


def test_glue_dir_env_is_the_fallback(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    with pytest.raises(DataFileError, match=r"GLUE_DIR: SST-2 folder .*SST-2 does not exist"):
        make_dm(tiny_model_dir, None)


@pytest.mark.parametrize("kw, message", [
    ({"val_fraction": 0.0}, r"^val_fraction must be in \(0, 1\)"),
    ({"val_fraction": 1.0}, r"^val_fraction must be in \(0, 1\)"),
    ({"max_length": 1}, r"^max_length must be >= 2"),
    # siblings of C16: options that would otherwise fail deep inside a run, refused at start
    ({"num_workers": -1}, r"^num_workers must be >= 0, got -1"),
    ({"max_train_samples": 0}, r"^max_train_samples must be >= 1 \(or null for all\), got 0"),
    ({"max_eval_samples": -5}, r"^max_eval_samples must be >= 1 \(or null for all\), got -5"),
    ({"seed": -1}, r"^seed must be in \[0, 2\*\*32 - 1\], got -1"),
    # issue 19: Python values of the wrong type, refused when built, by the argument's name
    ({"batch_size": 8.5}, r"^batch_size must be an integer, got 8.5 \(float\)"),
    ({"max_length": "64"}, r"^max_length must be an integer, got '64' \(str\)"),
    ({"group_by_length": "false"}, r"^group_by_length must be true or false, got 'false' \(str\)"),
])
def test_bad_options(kw, message):
    """From Python the error names the argument (``val_fraction``); the command line names ``data.val_fraction``
    (test_cli)."""
    with pytest.raises(ValueError, match=message):
        SST2DataModule(**kw)


def test_max_length_above_model_limit(tiny_model_dir, toy_glue_dir):
    with pytest.raises(ValueError, match=r"^max_length=1000 exceeds the model's limit of 512"):
        make_dm(tiny_model_dir, toy_glue_dir, max_length=1000)


@pytest.fixture(scope="module")
def short_model_dir(tmp_path_factory) -> str:
    """C16: a tiny BERT with a 64-position table whose tokenizer was saved without model_max_length."""
    d = tmp_path_factory.mktemp("tiny-bert-64")
    (d / "vocab.txt").write_text("\n".join(SPECIAL + POSITIVE + NEGATIVE + FILLER) + "\n")
    BertTokenizerFast(vocab=str(d / "vocab.txt")).save_pretrained(d)
    torch.manual_seed(0)
    BertModel(tiny_config(max_position_embeddings=64)).save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def long_rows_dir(tmp_path_factory) -> str:
    """C16: toy SST-2 whose train.tsv holds a few 100-word sentences (102 tokens with [CLS] and [SEP])."""
    d = tmp_path_factory.mktemp("glue-long") / "SST-2"
    d.mkdir()
    long = [(" ".join(FILLER[i % len(FILLER)] for i in range(99)) + " good ", 1)] * 4
    write_tsv(d / "train.tsv", "sentence\tlabel", toy_rows(60, seed=0) + long)
    write_tsv(d / "dev.tsv", "sentence\tlabel", toy_rows(20, seed=1))
    return str(d)


def test_max_length_above_position_table(short_model_dir, long_rows_dir):
    """C16: the limit comes from the model's position table, not the tokenizer's ~1e30 placeholder."""
    assert AutoTokenizer.from_pretrained(short_model_dir).model_max_length > 10**6
    with pytest.raises(OptionError, match=r"^max_length=128 exceeds the model's limit of 64 tokens$"):
        make_dm(short_model_dir, long_rows_dir)
    dm = make_dm(short_model_dir, long_rows_dir, max_length=64)
    assert max(dm.datasets["train"]["length"]) == 64  # the long rows are truncated to what the model holds


def test_max_length_above_position_table_from_cli(short_model_dir, long_rows_dir, tmp_path, monkeypatch, capsys):
    """C16 as reported: `fit` refuses with one line (status 2) before any training step."""
    monkeypatch.chdir(tmp_path)
    status = main(["fit", "--config", str(ROOT / "configs/sst2.yaml"), "--model.model_name_or_path", short_model_dir,
                   "--data.data_dir", long_rows_dir, "--trainer.max_steps", "3", "--trainer.accelerator", "cpu",
                   "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path)])
    assert status == 2
    assert "error: data.max_length=128 exceeds the model's limit of 64 tokens" in capsys.readouterr().err.splitlines()
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("config, limit", [
    (tiny_config(max_position_embeddings=64), 64),
    (DistilBertConfig(max_position_embeddings=64), 64),
    # RoBERTa's position ids start at pad_token_id + 1: 514 positions hold 512 tokens
    (RobertaConfig(max_position_embeddings=514, pad_token_id=1), 512),
    (RobertaConfig(max_position_embeddings=66, pad_token_id=1), 64),
])
def test_model_token_limit_reads_the_position_table(config, limit):
    assert model_token_limit(config) == limit


def test_model_token_limit_takes_the_smaller(short_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(short_model_dir)
    assert model_token_limit(tiny_config(max_position_embeddings=64), tokenizer) == 64  # tokenizer: ~1e30, unset
    tokenizer.model_max_length = 32
    assert model_token_limit(tiny_config(max_position_embeddings=64), tokenizer) == 32


def test_max_length_above_roberta_limit(short_model_dir, long_rows_dir, tmp_path):
    """C16 for a RoBERTa-like config: 66 positions with pad_token_id=1 hold 64 tokens."""
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(short_model_dir) / name).is_file():
            shutil.copy(Path(short_model_dir) / name, tmp_path / name)
    RobertaConfig(vocab_size=26, max_position_embeddings=66, pad_token_id=1).save_pretrained(tmp_path)
    with pytest.raises(OptionError, match=r"^max_length=65 exceeds the model's limit of 64 tokens$"):
        make_dm(str(tmp_path), long_rows_dir, max_length=65)
    assert max(make_dm(str(tmp_path), long_rows_dir, max_length=64).datasets["train"]["length"]) == 64


def test_tokenizer_larger_than_embedding_table(short_model_dir, long_rows_dir, tmp_path):
    """A sibling of C16: token ids the model's embedding table has no row for are refused at start."""
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(short_model_dir) / name).is_file():
            shutil.copy(Path(short_model_dir) / name, tmp_path / name)
    tiny_config(vocab_size=10).save_pretrained(tmp_path)
    with pytest.raises(OptionError, match=r"tokenizer has 26 tokens but the model's embedding table has 10 rows"):
        make_dm(str(tmp_path), long_rows_dir)


def test_val_fraction_leaving_no_train_rows(tmp_path, tiny_model_dir):
    """A sibling of C16: a split that would be empty is an option error naming the option, not a traceback."""
    write_tsv(tmp_path / "train.tsv", "sentence\tlabel", [("fine", 1), ("bad", 0), ("good", 1)])
    write_tsv(tmp_path / "dev.tsv", "sentence\tlabel", [("fine", 1)])
    with pytest.raises(OptionError, match=r"val_fraction=0.9 leaves no train rows of the 3 in .*train.tsv"):
        make_dm(tiny_model_dir, str(tmp_path), val_fraction=0.9, val_split="random")
    dm = make_dm(tiny_model_dir, str(tmp_path), val_fraction=0.9)  # by sentence: one sentence always stays in train
    assert (len(dm.datasets["train"]), len(dm.datasets["val"])) == (1, 2)


@pytest.mark.parametrize("inside", ["\r", "\x0b", "\x0c", "\x1c", "\x1e", "\x85", "\u2028"],
                         ids=["CR", "VT", "FF", "FS", "RS", "NEL", "LS"])
def test_odd_line_breaks_stay_in_the_sentence(tmp_path, tiny_model_dir, inside):
    """C18: only LF (or CRLF) ends a row, for the validator and the reader alike; the rest is text, kept as is."""
    rows = ["sentence\tlabel", f"it was a{inside}good film \t1", "awful \t0", f"dull{inside}\t0"]
    (tmp_path / "train.tsv").write_bytes("\n".join(rows).encode() + b"\n")
    ds = read_split(tmp_path / "train.tsv", labeled=True)
    assert ds[:] == {"sentence": [f"it was a{inside}good film ", "awful ", f"dull{inside}"], "label": [1, 0, 0]}
    write_tsv(tmp_path / "dev.tsv", "sentence\tlabel", [("fine", 1)])
    dm = make_dm(tiny_model_dir, str(tmp_path), val_fraction=0.34)
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 3


def test_replaced_file_with_same_mtime_is_reread(tmp_path, tiny_model_dir, toy_glue_dir):
    """C19: new contents with the old modification time (cp -p, rsync -a, archives) are read, not a cache."""
    data = tmp_path / "SST-2"
    shutil.copytree(toy_glue_dir, data)
    before = make_dm(tiny_model_dir, str(data))
    train = data / "train.tsv"
    stat = train.stat()
    lines = train.read_text().splitlines()
    flipped = [lines[0]] + [f"{s}\t{1 - int(label)}" for s, label in (line.split("\t") for line in lines[1:])]
    train.write_text("\n".join(flipped) + "\n")
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (train.stat().st_mtime_ns, train.stat().st_size) == (stat.st_mtime_ns, stat.st_size)
    after = make_dm(tiny_model_dir, str(data))
    for split in ("train", "val"):
        assert list(after.datasets[split]["labels"]) == [1 - y for y in before.datasets[split]["labels"]]
    assert not any(ds.cache_files for ds in after.datasets.values())  # nothing on disk to go stale


# --- TextClassificationDataModule: the user's own files (issue 12) ---------------------------------
from conftest import CLASS_WORDS  # noqa: E402
from lora_lightning.data import TextClassificationDataModule  # noqa: E402


@pytest.fixture(scope="module")
def sst2_as_other_formats(glue_dir, tmp_path_factory):
    """GLUE's SST-2 train and dev rewritten as CSV, JSON lines and Parquet (same rows, same order)."""
    from lora_lightning.data import read_split

    d = tmp_path_factory.mktemp("sst2-formats")
    frames = {s: read_split(Path(glue_dir) / f"{s}.tsv", True).to_pandas() for s in ("train", "dev")}
    for s, frame in frames.items():
        frame.to_csv(d / f"{s}.csv", index=False)
        frame.to_json(d / f"{s}.jsonl", orient="records", lines=True, force_ascii=False)
        frame.to_parquet(d / f"{s}.parquet")
    return d


@pytest.fixture(scope="module")
def sst2_first_test_batch(glue_dir, packaged_model) -> dict:
    """The SST-2 preset's first test batch from GLUE's TSV files (built once for the three formats)."""
    sst2 = make_dm(packaged_model, glue_dir, val_split="random")  # the own-data module splits single rows too
    return next(iter(sst2.test_dataloader()))


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_sst2_in_other_formats_gives_the_same_batches(sst2_as_other_formats, sst2_first_test_batch, packaged_model, ext):
    """The same split sizes and the same first test batch as the SST-2 preset's TSV path; the own-data split of
    single rows is stratified (C36): each class's share of val is its share of train, to one row."""
    own = TextClassificationDataModule(str(sst2_as_other_formats / f"train.{ext}"), test_file=str(sst2_as_other_formats / f"dev.{ext}"),
                                       text_column="sentence", model_name_or_path=packaged_model)
    own.setup("fit")
    assert own.num_labels == 2 and own.id2label == {0: "0", 1: "1"}  # integer labels: their values as names
    assert {k: len(v) for k, v in own.datasets.items()} == {"train": 60_614, "val": 6_735, "test": 872}
    a, b = sst2_first_test_batch, next(iter(own.test_dataloader()))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    positives = {k: sum(own.datasets[k]["labels"]) for k in ("train", "val")}
    assert abs(positives["val"] - 37_569 * 6_735 / 67_349) <= 1 and positives["train"] + positives["val"] == 37_569


def test_three_string_classes_from_three_formats(three_class_dir, tiny_model_dir):
    """Labels sorted by name; a validation file replaces the split; predict reads a .txt file of lines."""
    d = three_class_dir
    dm = TextClassificationDataModule(str(d / "train.csv"), validation_file=str(d / "validation.jsonl"),
                                      test_file=str(d / "test.parquet"), predict_file=str(d / "predict.txt"),
                                      model_name_or_path=tiny_model_dir, batch_size=8)
    assert dm.num_labels == 3 and dm.id2label == {0: "complaint", 1: "praise", 2: "rave"}
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 240, "val": 60, "test": 60}  # fit reads no predict file
    dm.setup("predict")
    assert len(dm.datasets["predict"]) == 6
    vocab = {w: dm.tokenizer.convert_tokens_to_ids(w) for words in CLASS_WORDS.values() for w in words}
    for row in dm.datasets["val"]:  # each label is the class of the word the text holds
        (word,) = [w for w, i in vocab.items() if i in row["input_ids"]]
        assert dm.id2label[row["labels"]] == next(k for k, ws in CLASS_WORDS.items() if word in ws)
    assert dm.predict_rows()["text"][0] == (d / "predict.txt").read_text().splitlines()[0]


def test_sentence_pairs_get_token_type_ids(tmp_path, tiny_model_dir):
    """[CLS] text [SEP] pair [SEP]: token_type_ids 0 on the first segment, 1 on the second."""
    rows = [{"premise": "the film is good", "hypothesis": "very lovely acting", "label": "yes"},
            {"premise": "a bad plot", "hypothesis": "the movie is great", "label": "no"}] * 10
    pd_path = tmp_path / "pairs.jsonl"
    pd_path.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    dm = TextClassificationDataModule(str(pd_path), text_column="premise", text_pair_column="hypothesis",
                                      model_name_or_path=tiny_model_dir, val_fraction=0.5)
    dm.setup("fit")
    row = dm.datasets["train"][0]
    sep = dm.tokenizer.sep_token_id
    first_sep = row["input_ids"].index(sep)
    assert row["input_ids"].count(sep) == 2 and row["input_ids"][-1] == sep
    assert row["token_type_ids"] == [0] * (first_sep + 1) + [1] * (len(row["input_ids"]) - first_sep - 1)
    text = dm.tokenizer.decode(row["input_ids"])
    assert text.startswith("[CLS] ") and text.count("[SEP]") == 2


def test_column_options_must_differ(tiny_model_dir):
    with pytest.raises(OptionError, match=r"^text_column='text', text_pair_column='label', label_column='label': "
                                          r"each must name a different column"):
        TextClassificationDataModule("t.csv", text_pair_column="label", model_name_or_path=tiny_model_dir)


@pytest.mark.parametrize("files, kw, message", [
    ({"train.csv": "text,label\na,pos\nb,neg\n", "dev.csv": "text,label\nc,pos\nd,meh\n"}, {},
     r"dev.csv, line 3: label 'meh' is not one of train_file's labels \['neg', 'pos'\]: add rows with it"),
    ({"train.csv": "text,label\na,pos\nb,pos\n"}, {},
     r"train.csv: every row has the label 'pos': a classifier needs at least 2 classes"),
    ({"train.csv": "review,label\na,pos\nb,neg\n"}, {},
     r"train.csv, line 1: missing column\(s\) \['text'\] in header \['review', 'label'\] \(text_column='text': name one"),
    ({"train.csv": "text,label\na,pos\nb,neg\n", "dev.csv": "text,stars\nc,pos\n"}, {},
     r"dev.csv, line 1: missing column\(s\) \['label'\] in header \['text', 'stars'\]"),
    ({"train.jsonl": '{"text": "a", "label": "pos"}\n{"text": ["b"], "label": "neg"}\n'}, {},
     r"train.jsonl, line 2: column 'text' holds \['b'\] \(list\), expected text"),
    ({"train.csv": "text,other,label\na,x,pos\nb,y,neg\n"}, {"predict_file": "p.txt", "text_pair_column": "other"},
     r"^predict_file: .*p.txt: a text file of lines has no second text"),
])
def test_bad_own_data_is_one_line(tmp_path, tiny_model_dir, files, kw, message):
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    (tmp_path / "p.txt").write_text("a\n")
    train = next(n for n in files if n.startswith("train"))
    dev = {"validation_file": str(tmp_path / "dev.csv")} if "dev.csv" in files else {}
    kw = {k: str(tmp_path / v) if k == "predict_file" else v for k, v in kw.items()}
    with pytest.raises(DataFileError if "predict_file" not in kw else OptionError, match=message):
        dm = TextClassificationDataModule(str(tmp_path / train), model_name_or_path=tiny_model_dir, **dev, **kw)
        dm.num_labels  # read when the CLI links it to the model
        dm.setup("predict" if "predict_file" in kw else "fit")


def test_predict_without_rows_says_which_option(three_class_dir, tiny_model_dir):
    dm = TextClassificationDataModule(str(three_class_dir / "train.csv"), model_name_or_path=tiny_model_dir)
    dm.setup("predict")
    with pytest.raises(DataFileError, match=r"predict needs rows to predict: pass --data.predict_file"):
        dm.predict_dataloader()


# --- issue 20: the val split by source sentence, groups and duplicates; issue 18: truncation, partial evaluation ---
def test_real_sst2_val_split_by_sentence(glue_dir, packaged_model):
    """The default split holds out whole source sentences: none of its val phrases occurs inside a train phrase
    (counted independently, as whole words), ~10% of the rows, the same for the same seed; said in one line."""
    from conftest import log_records
    from lora_lightning.data.splits import phrase_overlap

    with log_records("pytorch_lightning") as records:
        dm = make_dm(packaged_model, glue_dir)
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 67_349 and 0.10 <= len(dm.datasets["val"]) / 67_349 < 0.102
    line = [r.getMessage() for r in records if "val split by source sentence" in r.getMessage()]
    assert len(line) == 1 and "val phrases inside a train phrase: 0.0%" in line[0]
    train, val = dm.split_val(read_split(Path(glue_dir) / "train.tsv", labeled=True))  # the same split, as text
    assert len(val) == len(dm.datasets["val"]) and phrase_overlap(train["sentence"], val["sentence"]) == 0.0
    again = SST2DataModule(packaged_model, data_dir=glue_dir).split_val(read_split(Path(glue_dir) / "train.tsv", labeled=True))
    assert again[1]["sentence"] == val["sentence"]


def test_own_data_group_column_keeps_groups_whole(tmp_path, tiny_model_dir):
    """data.group_column: every review id on one side of the val split."""
    import csv

    rows = [(f"the film is {'good' if i % 2 else 'bad'} part {j}", i % 2, f"r{i}") for i in range(30) for j in range(3)]
    with (tmp_path / "train.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("text", "label", "review_id"), *rows])
    dm = TextClassificationDataModule(str(tmp_path / "train.csv"), group_column="review_id", val_fraction=0.2,
                                      model_name_or_path=tiny_model_dir)
    train, val = dm.split_val(dm.load_raw(("train",))["train"])
    assert set(train["group"]).isdisjoint(val["group"]) and len(val) >= 18 and len(val) % 3 == 0
    dm.setup("fit")
    assert len(dm.datasets["val"]) == len(val)
    with pytest.raises(DataFileError, match=r"missing column\(s\) \['source'\].*group_column='source'"):
        TextClassificationDataModule(str(tmp_path / "train.csv"), group_column="source",
                                     model_name_or_path=tiny_model_dir).setup("fit")


def test_duplicate_texts_between_splits_are_said(tmp_path, tiny_model_dir):
    """One warning per split with the count and two examples (case and spacing ignored)."""
    (tmp_path / "train.csv").write_text("text,label\nGreat film,1\nbad plot,0\nfine,1\ndull,0\n")
    (tmp_path / "val.csv").write_text("text,label\ngreat  film,1\nnew one,0\n")
    (tmp_path / "test.csv").write_text("text,label\nBAD PLOT,0\nfine,1\nother,1\n")
    dm = TextClassificationDataModule(str(tmp_path / "train.csv"), validation_file=str(tmp_path / "val.csv"),
                                      test_file=str(tmp_path / "test.csv"), model_name_or_path=tiny_model_dir)
    with pytest.warns(UserWarning) as caught:
        dm.setup("fit")
    said = [str(w.message) for w in caught if "also in train" in str(w.message)]
    assert len(said) == 2
    assert said[0].startswith("1 of 2 val rows (validation_file) have a text that is also in train") and "'great  film'" in said[0]
    assert said[1].startswith("2 of 3 test rows (test_file)") and "['BAD PLOT', 'fine']" in said[1]


def test_truncation_is_said_with_the_lengths(tmp_path, tiny_model_dir):
    """A newcomer's first hour: how many rows max_length cuts, per split, with the median and 95th percentile."""
    long = " ".join(["the film is very good"] * 10)  # 50 words: 52 tokens
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"{long if i < 3 else 'bad'},{i % 2}\n" for i in range(10)))
    (tmp_path / "p.txt").write_text(f"{long}\nfine\n")
    dm = TextClassificationDataModule(str(tmp_path / "train.csv"), predict_file=str(tmp_path / "p.txt"), max_length=16,
                                      val_fraction=0.5, model_name_or_path=tiny_model_dir)
    with pytest.warns(UserWarning, match=r"^max_length=16 tokens cuts .*train rows.*; tokens per row: median 3, "
                                         r"95th percentile 52: a larger max_length keeps more"):
        dm.setup("fit")
    with pytest.warns(UserWarning, match=r"^max_length=16 tokens cuts 1 of 2 predict rows \(50%\); tokens per row: "
                                         r"median 52, 95th percentile 52"):
        dm.setup("predict")


def test_partial_validation_scores_rows_in_file_order(tmp_path, tiny_model_dir):
    """C24: 16 val rows alternating short neg / long pos, batches of 4, limit_val_batches=0.5: the 8 rows scored are
    the first 8 in file order (4 of each), not the 8 longest; said in one line."""
    import pytorch_lightning as pl

    from conftest import log_records, quiet_trainer
    from lora_lightning.model import LoRAClassifier

    rows = [("bad", "neg") if i % 2 == 0 else (" ".join(["the film is good"] * 5), "pos") for i in range(16)]
    (tmp_path / "train.csv").write_text("text,label\nbad,neg\ngood,pos\n")
    (tmp_path / "val.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    dm = TextClassificationDataModule(str(tmp_path / "train.csv"), validation_file=str(tmp_path / "val.csv"),
                                      eval_batch_size=4, model_name_or_path=tiny_model_dir)

    class Seen(pl.Callback):
        labels = []

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            self.labels += batch["labels"].tolist()

    seen = Seen()
    with log_records("pytorch_lightning") as records:
        quiet_trainer(limit_val_batches=0.5, callbacks=[seen]).validate(
            LoRAClassifier(tiny_model_dir, id2label={0: "neg", 1: "pos"}), dm, verbose=False)
    assert sorted(seen.labels) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert any("scores the first 8 of 16 val rows in file order" in r.getMessage() for r in records)


def test_quoted_tsv_trains(tmp_path, tiny_model_dir):
    """C27 end to end: a pandas-written TSV of reviews with tabs and line breaks inside quoted fields is read one
    row per record (the data module's default tsv_quoting=auto)."""
    import pandas as pd

    reviews = [("Fine book.\n\tRead it twice.", "pos"), ('A "so-so" read', "neg")] * 6
    pd.DataFrame(reviews, columns=["text", "label"]).to_csv(tmp_path / "train.tsv", sep="\t", index=False)
    dm = TextClassificationDataModule(str(tmp_path / "train.tsv"), val_fraction=0.5, model_name_or_path=tiny_model_dir)
    dm.setup("fit")
    assert dm.id2label == {0: "neg", 1: "pos"} and len(dm.datasets["train"]) + len(dm.datasets["val"]) == 12


def test_long_fields_and_lone_surrogates_reach_the_model(tmp_path, tiny_model_dir):
    """C29 and C30 through the data module: a 200,000-character CSV review (train and predict) is read and cut to
    max_length, counted in the truncation line; a JSON-lines test row ending in half an emoji is kept, said once."""
    import csv
    import json

    long = "the film is good " * 12_000
    rows = [("bad plot", "0"), ("good film", "1")] * 6
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text", "label"], *rows, [long, "1"]])
    with open(tmp_path / "predict.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text"], ["fine"], [long]])
    (tmp_path / "test.jsonl").write_text("".join(json.dumps({"text": t, "label": int(y)}) + "\n" for t, y in rows[:2])
                                         + '{"text": "great \\ud83d", "label": 1}\n')
    dm = TextClassificationDataModule(str(tmp_path / "train.csv"), test_file=str(tmp_path / "test.jsonl"),
                                      predict_file=str(tmp_path / "predict.csv"), max_length=32, val_fraction=0.2,
                                      model_name_or_path=tiny_model_dir)
    with pytest.warns(UserWarning) as caught:
        dm.setup("fit")
        dm.setup("predict")
    said = [str(w.message) for w in caught]
    assert sum("test.jsonl, line 3: a lone UTF-16 surrogate" in m for m in said) == 1
    assert any(m.startswith("max_length=32 tokens cuts 1 of 2 predict rows") for m in said), said
    lengths = [n for k in ("train", "val") for n in dm.datasets[k]["length"]]
    assert len(lengths) == 13 and max(lengths) == 32
    assert list(dm.datasets["predict"]["length"]) == [3, 32]
    assert len(dm.datasets["test"]) == 3  # the row with half an emoji is kept


def test_the_random_split_keeps_every_class_in_train(tmp_path, tiny_model_dir):
    """C36: 40 rows of two classes and 2 of a third, no validation file: for every seed, the val split is stratified,
    every class trains (a class of one row too), and the rare class is in val only as its share says."""
    rows = [(f"good film {i}", "pos") for i in range(20)] + [(f"bad film {i}", "neg") for i in range(20)]
    rows += [("boring plot", "meh"), ("dull plot", "meh")]
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows) + "tedious,rare\n")
    for seed in range(6):
        dm = TextClassificationDataModule(str(tmp_path / "train.csv"), val_fraction=0.1, seed=seed,
                                          model_name_or_path=tiny_model_dir)
        dm.setup("fit")
        train, val = (sorted(dm.datasets[k]["labels"]) for k in ("train", "val"))
        names = dm.id2label
        assert {names[i] for i in train} == {"meh", "neg", "pos", "rare"}
        assert len(val) == 5 and sorted(names[i] for i in val).count("rare") == 0
        assert sorted(names[i] for i in val).count("meh") <= 1
