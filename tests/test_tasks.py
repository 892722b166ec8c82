"""tasks/: the three problem types, from the file's label cells to the loss, the metrics, predict and the export."""

import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from conftest import CLASS_WORDS, FILLER, NEGATIVE, POSITIVE
from lora_lightning.cli import cli_main, main
from lora_lightning.data import DataFileError, OptionError, TextClassificationDataModule
from lora_lightning.tables import read_table
from lora_lightning.tasks import LabelSpec, MultiLabel, Regression, SingleLabel

ROOT = Path(__file__).resolve().parents[1]
EMOTIONS = {"happy": ["great", "lovely", "superb"], "angry": ["awful", "bad", "poor"], "bored": ["dull", "boring", "tedious"]}


def emotion_rows(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """``n`` texts each holding the words of 0, 1 or 2 emotions; the labels are those emotions."""
    g = torch.Generator().manual_seed(seed)
    names = list(EMOTIONS)
    rows = []
    for i in range(n):
        chosen = [names[i % 3], names[(i + 1) % 3]][: i % 3]  # 0, 1 or 2 labels
        words = [EMOTIONS[e][int(torch.randint(3, (1,), generator=g))] for e in chosen]
        filler = [FILLER[int(j)] for j in torch.randint(len(FILLER), (3,), generator=g)]
        rows.append((" ".join(filler[:2] + words + filler[2:]), chosen))
    return rows


def write_headerless(path: Path, rows, ids: dict) -> Path:
    """GoEmotions' layout: no header; text, label ids joined by ',', a comment id."""
    path.write_text("".join(f"{t}\t{','.join(str(ids[e]) for e in labels)}\tc{i}\n" for i, (t, labels) in enumerate(rows)))
    return path


# --- data: label cells to targets ---------------------------------------------------------------
def test_multi_label_cells_in_every_shape(tmp_path):
    """A delimited cell, an empty one (no label), a JSON list, a number: each row's multi-hot target over the union of
    train's labels, sorted; 0/1 columns give the same targets named by the columns."""
    (tmp_path / "t.tsv").write_text("text\tlabels\na\t0,4\nb\t\nc\t4\nd\t2;0\n")
    spec = LabelSpec("labels", delimiter=",")
    with pytest.raises(DataFileError, match=r"t.tsv, line 5: label cell '2;0' of column 'labels' is separated by ';', "
                                            r"but label_delimiter=',': pass --data.label_delimiter ';'"):
        MultiLabel.label_values(lambda: read_table(tmp_path / "t.tsv", "x"), spec)
    (tmp_path / "t.tsv").write_text("text\tlabels\na\t0,4\nb\t\nc\t4\nd\t2,0\n")
    table = read_table(tmp_path / "t.tsv", "x")
    classes = MultiLabel.label_values(lambda: table, spec)
    assert classes == [0, 2, 4]
    assert MultiLabel.encode(table, spec, classes, "known") == [[1, 0, 1], [0, 0, 0], [0, 0, 1], [1, 1, 0]]
    (tmp_path / "t.jsonl").write_text('{"text": "a", "labels": ["joy", "fear"]}\n{"text": "b", "labels": []}\n'
                                      '{"text": "c", "labels": "joy"}\n')
    table = read_table(tmp_path / "t.jsonl", "x")
    assert MultiLabel.label_values(lambda: table, spec) == ["fear", "joy"]
    assert MultiLabel.encode(table, spec, ["fear", "joy"], "known") == [[1, 1], [0, 0], [0, 1]]
    (tmp_path / "c.csv").write_text("text,joy,fear\na,1,0\nb,0,0\nc,true,1\nd,1,2\n")
    columns = LabelSpec(columns=["joy", "fear"])
    table = read_table(tmp_path / "c.csv", "x")
    assert MultiLabel.label_values(lambda: table, columns) == ["joy", "fear"]
    with pytest.raises(DataFileError, match=r"c.csv, line 5: column 'fear' holds '2', but a label column of label_columns holds 0 or 1"):
        MultiLabel.encode(table, columns, ["joy", "fear"], "known")


def test_regression_targets_are_numbers(tmp_path):
    """STS-B's `5.000` and `4` are one kind of value; a vector target from several columns; a word is refused by line."""
    (tmp_path / "s.tsv").write_text("a\tb\tscore\tother\nx\ty\t5.000\t1\nx\tz\t4\t-0.5\nx\tw\t0.8\t2e-1\n")
    table = read_table(tmp_path / "s.tsv", "x")
    assert Regression.encode(table, LabelSpec("score"), ["score"], "") == [[5.0], [4.0], [0.8]]
    two = LabelSpec(columns=["score", "other"])
    assert Regression.label_values(lambda: table, two) == ["score", "other"]
    assert Regression.encode(table, two, ["score", "other"], "")[1] == [4.0, -0.5]
    (tmp_path / "bad.tsv").write_text("a\tscore\nx\t3.2\ny\thigh\n")
    with pytest.raises(DataFileError, match=r"bad.tsv, line 3: target 'high' in column 'score' is not a number"):
        Regression.encode(read_table(tmp_path / "bad.tsv", "x"), LabelSpec("score"), ["score"], "")


def test_single_label_errors_say_which_problem_type(tmp_path):
    """The two first tries of issue 27: a score column and a list column read as classes say what to pass."""
    (tmp_path / "s.tsv").write_text("text\tscore\n" + "".join(f"t{i}\t{v}\n" for i, v in enumerate(["5.000", "3.800", "4", "1.2"])))
    with pytest.raises(DataFileError, match=r"line 4: label '4' is a number.*pass --data.problem_type regression"):
        SingleLabel.label_values(lambda: read_table(tmp_path / "s.tsv", "x"), LabelSpec("score"))
    (tmp_path / "m.tsv").write_text("text\tlabel\n" + "".join(f"t{i}\t{v}\n" for i, v in enumerate(["4", "0,5", "3", "4"])))
    with pytest.raises(DataFileError, match=r"for several labels per text \(here lists such as '0,5'\) pass --data.problem_type "
                                            r"multi_label_classification"):
        SingleLabel.label_values(lambda: read_table(tmp_path / "m.tsv", "x"), LabelSpec("label"))


def test_headerless_files_and_label_names(tmp_path, tiny_model_dir):
    """GoEmotions' layout through the data module: no header row (data.column_names), ids named by a labels.txt,
    line numbers from 1; a val label outside train's is one line; a header-less file read without column_names
    says to pass them."""
    ids = {e: i for i, e in enumerate(EMOTIONS)}
    train = write_headerless(tmp_path / "train.tsv", emotion_rows(30), ids)
    (tmp_path / "labels.txt").write_text("\n".join(EMOTIONS))
    dm = TextClassificationDataModule(str(train), model_name_or_path=tiny_model_dir, column_names=["text", "labels", "id"],
                                      label_column="labels", problem_type="multi_label_classification",
                                      label_names=str(tmp_path / "labels.txt"), val_fraction=0.2)
    assert dm.num_labels == 3 and dm.id2label == dict(enumerate(EMOTIONS)) and dm.hparams.label_names == list(EMOTIONS)
    dm.setup("fit")
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 30
    assert dm.label_counts() == ([sum(r["labels"][k] for r in dm.datasets["train"]) for k in range(3)], len(dm.datasets["train"]))
    (tmp_path / "dev.tsv").write_text("fine\t0\tx\nbad\t0,3\ty\n")
    dm = TextClassificationDataModule(str(train), validation_file=str(tmp_path / "dev.tsv"), model_name_or_path=tiny_model_dir,
                                      column_names=["text", "labels", "id"], label_column="labels",
                                      problem_type="multi_label_classification", label_names=list(EMOTIONS))
    with pytest.raises(DataFileError, match=r"dev.tsv, line 2: label '3' is not one of the classes label_names=\[0, 1, 2\]"):
        dm.setup("fit")
    plain = TextClassificationDataModule(str(train), model_name_or_path=tiny_model_dir)
    with pytest.raises(DataFileError, match=r"train.tsv, line 1: missing column\(s\) \['text'\] in header .* no header row\? "
                                            r"name the columns with column_names \[text, label, id\]"):
        plain.setup("fit")


@pytest.mark.parametrize("kwargs, message", [
    ({"label_columns": ["a", "b"]}, r"label_columns=\['a', 'b'\]: one column per label is for problem_type=multi_label"),
    ({"problem_type": "ranking"}, r"problem_type must be one of \['single_label_classification', 'multi_label_classification', 'regression'\]"),
    ({"problem_type": "multi_label_classification", "label_delimiter": ""}, r"label_delimiter must not be empty"),
])
def test_bad_problem_type_options(kwargs, message, tiny_model_dir):
    with pytest.raises(OptionError, match=message):
        TextClassificationDataModule("x.csv", model_name_or_path=tiny_model_dir, **kwargs)


# --- class weights --------------------------------------------------------------------------------
def test_class_weights_are_the_textbook_ones():
    """balanced, single-label: scikit-learn's n / (K * count); multi-label: negatives / positives per label, as
    BCEWithLogitsLoss's pos_weight; the losses equal PyTorch's own with those weights."""
    names = ["a", "b", "c"]
    w = SingleLabel.resolve_class_weights("balanced", ([6, 3, 1], 10), names)
    torch.testing.assert_close(w, torch.tensor([10 / 18, 10 / 9, 10 / 3]))
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 2, 0])
    torch.testing.assert_close(SingleLabel(names, class_weight=w).loss(logits, labels), F.cross_entropy(logits, labels, weight=w))
    p = MultiLabel.resolve_class_weights("balanced", ([2, 5, 1], 10), names)
    torch.testing.assert_close(p, torch.tensor([4.0, 1.0, 9.0]))
    targets = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]])
    torch.testing.assert_close(MultiLabel(names, class_weight=p).loss(logits, targets),
                               torch.nn.BCEWithLogitsLoss(pos_weight=p)(logits, targets))
    with pytest.raises(OptionError, match=r"class_weights has 2 weights, but the model has 3 outputs \['a', 'b', 'c'\]"):
        SingleLabel.resolve_class_weights([1.0, 2.0], None, names)
    with pytest.raises(OptionError, match=r"a regression loss takes no class weights"):
        Regression.resolve_class_weights("balanced", None, ["score"])
    with pytest.raises(DataFileError, match=r"class_weights=balanced: the train rows hold no 'c'"):
        SingleLabel.resolve_class_weights("balanced", ([6, 4, 0], 10), names)


# --- end to end -----------------------------------------------------------------------------------
def test_multi_label_fit_predict_export(tmp_path, monkeypatch, tiny_model_dir, capsys):
    """A headerless multi-label file, from fit to predict and the exports, with balanced positive weights: logged
    micro/macro/per-label F1 and subset accuracy; the weights said, saved in the checkpoint and kept on resume;
    predict writes, in input order, the labels at or above the threshold with every label's probability; the merged
    export's pipeline (top_k=None) gives those probabilities (sigmoid), the PEFT adapter the same logits."""
    import peft
    from transformers import AutoModelForSequenceClassification, pipeline

    from lora_lightning.model import LoRAClassifier

    monkeypatch.chdir(tmp_path)
    ids = {e: i for i, e in enumerate(EMOTIONS)}
    write_headerless(tmp_path / "train.tsv", emotion_rows(150), ids)
    write_headerless(tmp_path / "dev.tsv", emotion_rows(30, seed=1), ids)
    (tmp_path / "labels.txt").write_text("\n".join(EMOTIONS) + "\n")
    texts = [t for t, _ in emotion_rows(6, seed=2)]
    (tmp_path / "predict.txt").write_text("".join(t + "\n" for t in texts))
    common = ["--config", "own-data.yaml", "--model.model_name_or_path", tiny_model_dir, "--trainer.accelerator", "cpu",
              "--trainer.enable_progress_bar", "false", "--data.train_file", str(tmp_path / "train.tsv"),
              "--data.validation_file", str(tmp_path / "dev.tsv"), "--data.test_file", str(tmp_path / "dev.tsv"),
              "--data.predict_file", str(tmp_path / "predict.txt"), "--data.column_names", "[text,labels,id]",
              "--data.label_column", "labels", "--data.problem_type", "multi_label_classification",
              "--data.label_names", str(tmp_path / "labels.txt")]
    cli = cli_main(["fit", *common, "--trainer.max_epochs", "12", "--model.learning_rate", "3e-2",
                    "--model.class_weights", "balanced"])
    model, ckpt = cli.model, cli.trainer.checkpoint_callback
    assert model.hparams.problem_type == "multi_label_classification" and model.model.config.problem_type == "multi_label_classification"
    positives, rows = cli.datamodule.label_counts()
    torch.testing.assert_close(model.task.class_weight, torch.tensor([(rows - c) / c for c in positives]))
    assert ckpt.monitor == "val_macro_f1" and Path(ckpt.best_model_path).name.startswith("epoch=")
    assert float(ckpt.best_model_score) > 0.8  # well above the 0.5-ish of guessing
    logged = set(cli.trainer.callback_metrics)
    assert {"val_micro_f1", "val_macro_f1", "val_subset_acc", "val_f1_happy", "val_f1_angry", "val_f1_bored", "val_loss"} <= logged
    saved = torch.load(ckpt.best_model_path, weights_only=True)
    assert saved["class_weights"] == pytest.approx(model.task.class_weight.tolist())
    out = capsys.readouterr().out + capsys.readouterr().err
    predicted = cli_main(["predict", *common, "--model.threshold", "0.5", "--ckpt_path", ckpt.best_model_path])
    lines = (Path(predicted.trainer.log_dir) / "predictions.tsv").read_text().splitlines()
    assert lines[0] == "text\tlabels\tprobability_happy\tprobability_angry\tprobability_bored" and len(lines) == 7
    loaded = LoRAClassifier.load_from_checkpoint(ckpt.best_model_path)
    batch = cli.datamodule.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = loaded(**batch).sigmoid()
    for line, p in zip(lines[1:], probs.tolist()):
        text, chosen, *cells = line.split("\t")
        assert [float(c) for c in cells] == pytest.approx(p, abs=1e-5)
        assert chosen == ",".join(n for n, q in zip(EMOTIONS, p) if q >= 0.5)
    assert [l.split("\t")[0] for l in lines[1:]] == texts
    assert main(["export", "--ckpt_path", ckpt.best_model_path, "--output_dir", str(tmp_path / "merged")]) == 0
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["problem_type"] == "multi_label_classification"
    scores = pipeline("text-classification", model=str(tmp_path / "merged"), top_k=None)(texts[:2])
    for row, p in zip(scores, probs[:2].tolist()):
        assert {d["label"]: d["score"] for d in row} == pytest.approx(dict(zip(EMOTIONS, p)), abs=1e-5)
    assert main(["export", "--ckpt_path", ckpt.best_model_path, "--output_dir", str(tmp_path / "adapter"), "--format", "adapter"]) == 0
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3, problem_type="multi_label_classification")
    with torch.no_grad():
        got = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()(**batch).logits.sigmoid()
    torch.testing.assert_close(got, probs, atol=1e-5, rtol=0)
    # resuming with other class weights: the checkpoint's go on, said in one line
    with pytest.warns(UserWarning, match=r"using the checkpoint's model.class_weights='balanced', not model.class_weights=\[1.0, 1.0, 1.0\]"):
        resumed = cli_main(["fit", *common, "--trainer.max_epochs", "13", "--model.class_weights", "[1,1,1]",
                            "--ckpt_path", str(Path(ckpt.dirpath) / "last.ckpt")])
    torch.testing.assert_close(resumed.model.task.class_weight, model.task.class_weight)


def test_regression_fit_test_predict_export(tmp_path, monkeypatch, tiny_model_dir):
    """Sentence pairs with a 0-5 score: MSE, pearson / spearman / mse / mae logged and a scatter figure on val; the best
    checkpoint chosen by val_pearson although the config monitors val_acc (said); predict writes each pair's value;
    the merged export's pipeline returns it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import pipeline

    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    words = POSITIVE + NEGATIVE
    rows = []
    for i in range(160):  # the score: how many of the 2 sentiment words of the pair are positive, scaled to 0..5
        a, b = (words[int(j)] for j in torch.randint(len(words), (2,), generator=g))
        # every sentence once (a number the tokenizer reads as [UNK]): the val split holds no sentence of train
        rows.append((f"the film is {a} {i}", f"a {b} movie {i}", f"{2.5 * ((a in POSITIVE) + (b in POSITIVE)):.3f}"))
    (tmp_path / "pairs.tsv").write_text("s1\ts2\tscore\n" + "".join("\t".join(r) + "\n" for r in rows))
    common = ["--config", "own-data.yaml", "--model.model_name_or_path", tiny_model_dir, "--trainer.accelerator", "cpu",
              "--trainer.enable_progress_bar", "false", "--data.train_file", str(tmp_path / "pairs.tsv"),
              "--data.test_file", str(tmp_path / "pairs.tsv"), "--data.predict_file", str(tmp_path / "pairs.tsv"),
              "--data.text_column", "s1", "--data.text_pair_column", "s2", "--data.label_column", "score",
              "--data.problem_type", "regression", "--data.group_column", "[s1,s2]"]
    cli = cli_main(["fit", *common, "--trainer.max_epochs", "25", "--model.learning_rate", "2e-2"])
    ckpt = cli.trainer.checkpoint_callback
    assert ckpt.monitor == "val_pearson" and "val_pearson=" in Path(ckpt.best_model_path).name
    assert cli.model.label_names == ["score"] and cli.model.model.classifier.out_features == 1
    assert float(ckpt.best_model_score) > 0.6  # chance is 0
    events = EventAccumulator(cli.trainer.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert {"val_pearson", "val_spearman", "val_mse", "val_mae", "hp/val_pearson"} <= set(events.Tags()["scalars"])
    assert len(events.Images("val_scatter")) == 25
    tested = cli_main(["test", *common, "--ckpt_path", ckpt.best_model_path])
    assert tested.trainer.callback_metrics["test_mse"] == pytest.approx(float(tested.trainer.callback_metrics["test_loss"]), rel=1e-4)
    predicted = cli_main(["predict", *common, "--ckpt_path", ckpt.best_model_path])
    lines = (Path(predicted.trainer.log_dir) / "predictions.tsv").read_text().splitlines()
    assert lines[0] == "s1\ts2\tscore" and len(lines) == 161
    assert main(["export", "--ckpt_path", ckpt.best_model_path, "--output_dir", str(tmp_path / "merged")]) == 0
    (out,) = pipeline("text-classification", model=str(tmp_path / "merged"), top_k=None)({"text": rows[0][0], "text_pair": rows[0][1]})
    assert out["label"] == "score" and out["score"] == pytest.approx(float(lines[1].split("\t")[2]), abs=1e-5)


def test_real_goemotions_and_stsb_read_as_published(packaged_model):
    """The shipped configs read the real files: GoEmotions' 43,410 headerless training comments with the label counts
    its README gives (3,855 with two or more); STS-B's 5,749 scores, every one a number."""
    data = ROOT.parent / "shared" / "data"
    if not (data / "goemotions-ekman" / "train.tsv").is_file():
        import os

        message = f"real GoEmotions / STS-B not found under {data}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    ge = data / "goemotions-ekman"
    dm = TextClassificationDataModule(str(ge / "train.tsv"), model_name_or_path=packaged_model, column_names=["text", "labels", "id"],
                                      label_column="labels", problem_type="multi_label_classification",
                                      label_names=str(ge / "labels.txt"))
    train = dm.load_raw(("train",))["train"]
    counts, rows = dm.task.counts(train["label"], dm.num_labels)
    assert rows == 43_410 and dict(zip(dm.id2label.values(), counts)) == {
        "anger": 5579, "disgust": 793, "fear": 726, "joy": 17410, "neutral": 14219, "sadness": 3263, "surprise": 5367}
    assert sum(sum(r) >= 2 for r in train["label"]) == 3_855
    stsb = data / "glue" / "STS-B"
    dm = TextClassificationDataModule(str(stsb / "train.tsv"), text_column="sentence1", text_pair_column="sentence2",
                                      label_column="score", problem_type="regression", model_name_or_path=packaged_model)
    scores = [s for (s,) in dm.load_raw(("train",))["train"]["label"]]
    assert len(scores) == 5_749 and min(scores) == 0.0 and max(scores) == 5.0


def test_python_users_own_trainer(tmp_path, tiny_model_dir):
    """From Python: a model built from the data module's problem type and labels trains with a plain pl.Trainer and
    comes back with load_from_checkpoint as the same multi-label model; one of another problem type is refused at
    fit start, in one line saying what to pass."""
    import pytorch_lightning as pl

    from conftest import quiet_trainer
    from lora_lightning.model import LoRAClassifier

    ids = {e: i for i, e in enumerate(EMOTIONS)}
    dm = TextClassificationDataModule(str(write_headerless(tmp_path / "train.tsv", emotion_rows(60), ids)),
                                      model_name_or_path=tiny_model_dir, column_names=["text", "labels", "id"],
                                      label_column="labels", problem_type="multi_label_classification", label_names=list(EMOTIONS))
    pl.seed_everything(0)
    model = LoRAClassifier(tiny_model_dir, problem_type=dm.problem_type, num_labels=dm.num_labels, id2label=dm.id2label,
                           threshold=0.4)
    trainer = quiet_trainer(max_steps=3)
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    back = LoRAClassifier.load_from_checkpoint(tmp_path / "m.ckpt")
    assert back.task.problem_type == "multi_label_classification" and back.task.threshold == 0.4
    assert back.label_names == list(EMOTIONS) and back.model.config.problem_type == "multi_label_classification"
    wrong = LoRAClassifier(tiny_model_dir, num_labels=3, id2label=dm.id2label)
    with pytest.raises(OptionError, match=r"the data is problem_type=multi_label_classification, but the model is "
                                          r"problem_type=single_label_classification"):
        quiet_trainer(max_steps=1).fit(wrong, dm)


@pytest.mark.parametrize("problem_type", ["multi_label_classification", "regression"])
def test_resumed_run_equals_uninterrupted(problem_type, tmp_path, tiny_model_dir):
    """Stop after epoch 1, resume from last.ckpt: the weights, the monitored metric and the class weights equal an
    uninterrupted run's exactly (CPU), for each problem type beyond one label per text."""
    import pytorch_lightning as pl

    from conftest import quiet_trainer
    from lora_lightning.callbacks import ModelCheckpoint
    from lora_lightning.model import LoRAClassifier

    ids = {e: i for i, e in enumerate(EMOTIONS)}
    rows = emotion_rows(48)
    if problem_type == "regression":
        (tmp_path / "t.tsv").write_text("text\tscore\n" + "".join(f"{t} {i}\t{len(l) * 1.5}\n" for i, (t, l) in enumerate(rows)))
        data = dict(label_column="score")
    else:
        write_headerless(tmp_path / "t.tsv", rows, ids)
        data = dict(column_names=["text", "labels", "id"], label_column="labels", label_names=list(EMOTIONS))

    class StopAfterFirstEpoch(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    def run(dirpath, ckpt_path=None, stop=False):
        pl.seed_everything(7)
        dm = TextClassificationDataModule(str(tmp_path / "t.tsv"), model_name_or_path=tiny_model_dir, batch_size=8,
                                          val_fraction=0.25, problem_type=problem_type, **data)
        weights = "balanced" if problem_type != "regression" else None
        model = LoRAClassifier(tiny_model_dir, lora_dropout=0.1, learning_rate=1e-2, problem_type=problem_type,
                               num_labels=dm.num_labels, id2label=dm.id2label, class_weights=weights)
        checkpoint = ModelCheckpoint(dirpath=dirpath, save_last=True, monitor="val_acc", mode="max")  # switched to the type's
        t = quiet_trainer(max_epochs=3, enable_checkpointing=True, callbacks=[checkpoint] + ([StopAfterFirstEpoch()] if stop else []))
        t.fit(model, dm, ckpt_path=ckpt_path)
        return model, float(t.callback_metrics[checkpoint.monitor]), checkpoint.monitor

    full, full_score, monitor = run(tmp_path / "a")
    assert monitor == {"regression": "val_pearson", "multi_label_classification": "val_macro_f1"}[problem_type]
    run(tmp_path / "b", stop=True)
    resumed, resumed_score, _ = run(tmp_path / "b", ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert resumed_score == full_score
    if problem_type != "regression":
        assert torch.equal(resumed.task.class_weight, full.task.class_weight)
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name
