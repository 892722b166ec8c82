"""predict.py and data.predict_file: one prediction per input line, in order, never a crash."""

import csv

import pytest

from conftest import quiet_trainer
from lora_lightning.data import SST2DataModule
from lora_lightning.errors import OptionError
from lora_lightning.model import LoRAClassifier
from lora_lightning.predict import SST2PredictionWriter


def run_predict(tiny_ckpt, tiny_model_dir, toy_glue_dir, out, trainer_kw=None, **dm_kw):
    model = LoRAClassifier.load_from_checkpoint(tiny_ckpt, map_location="cpu")
    dm = SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir, max_length=8, **dm_kw)
    trainer = quiet_trainer(callbacks=[SST2PredictionWriter(str(out))], **(trainer_kw or {}))
    trainer.predict(model, dm, return_predictions=False)
    with open(out, newline="") as f:
        return list(csv.reader(f, delimiter="\t"))


def test_text_file_rows_in_order(tiny_ckpt, tiny_model_dir, toy_glue_dir, tmp_path):
    lines = ["the film is great", "", "a dull movie", "the plot is " + "very " * 40 + "poor", "boring\tfilm"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n")
    rows = run_predict(tiny_ckpt, tiny_model_dir, toy_glue_dir, tmp_path / "out.tsv", predict_file=str(src))
    assert rows[0] == ["sentence", "label", "probability"]
    assert [r[0] for r in rows[1:]] == lines  # 5 rows, input order, empty and long lines included
    assert all(r[1] in {"negative", "positive"} and 0.5 <= float(r[2]) <= 1 for r in rows[1:])
    # predict batches run in file order (sort_eval_by_length is for val/test): the same file either way
    unsorted = run_predict(tiny_ckpt, tiny_model_dir, toy_glue_dir, tmp_path / "out2.tsv", predict_file=str(src),
                           sort_eval_by_length=False)
    assert unsorted == rows


def test_glue_submission_format(tiny_ckpt, tiny_model_dir, toy_glue_dir, tmp_path):
    rows = run_predict(tiny_ckpt, tiny_model_dir, toy_glue_dir, tmp_path / "SST-2.tsv")
    assert rows[0] == ["index", "prediction"]
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(10)] and {r[1] for r in rows[1:]} <= {"0", "1"}


def test_existing_predictions_are_kept(tiny_ckpt, tiny_model_dir, toy_glue_dir, tmp_path):
    out = tmp_path / "SST-2.tsv"
    out.write_text("earlier results\n")
    with pytest.raises(FileExistsError, match="SST-2.tsv exists"):
        run_predict(tiny_ckpt, tiny_model_dir, toy_glue_dir, out)
    assert out.read_text() == "earlier results\n"


def test_invalid_utf8_names_the_line(tmp_path, tiny_model_dir, toy_glue_dir):
    src = tmp_path / "bad.txt"
    src.write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    dm = SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir, predict_file=str(src))
    with pytest.raises(ValueError, match=r"bad.txt, line 3: not valid UTF-8"):
        dm.setup("predict")


def test_limited_predict_batches_say_what_to_do(tiny_ckpt, tiny_model_dir, toy_glue_dir, tmp_path):
    """trainer.limit_predict_batches leaves rows without a prediction: one error naming the option, no file."""
    out = tmp_path / "SST-2.tsv"
    with pytest.raises(OptionError, match=r"predicted 4 of 10 rows \(trainer.limit_predict_batches=1\).*data.predict_file"):
        run_predict(tiny_ckpt, tiny_model_dir, toy_glue_dir, out, trainer_kw={"limit_predict_batches": 1},
                    eval_batch_size=4)
    assert not out.exists()


def test_predicting_own_sentences_needs_no_glue_data(tiny_ckpt, tiny_model_dir, tmp_path, monkeypatch):
    """A newcomer's first hour: `predict --config sst2.yaml --data.predict_file my.txt` with no GLUE_DIR and no
    network reads only the file (not SST-2 from the Hub)."""
    from lora_lightning.cli import cli_main

    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.txt").write_text("the film is great\na dull movie\n")
    predicted = cli_main(["predict", "--config", "sst2.yaml", "--model.model_name_or_path", tiny_model_dir,
                          "--ckpt_path", tiny_ckpt, "--data.predict_file", "my.txt", "--trainer.accelerator", "cpu"])
    from pathlib import Path

    rows = (Path(predicted.trainer.log_dir) / "predictions.tsv").read_text().splitlines()
    assert rows[0] == "sentence\tlabel\tprobability" and len(rows) == 3
