"""The LightningCLI entry point (cli.py) and the YAML configs."""

import re
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lora_lightning.cli import cli_main, main
from lora_lightning.errors import DataFileError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_config_parses(config, capsys):
    """Each YAML is plain LightningCLI config: it validates against the signatures (no model load)."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(ROOT / "configs/sst2.yaml"), "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert "model_name_or_path" not in resolved["data"]  # linked: set once, on the model
    expected = "bert-base-uncased" if "bert-base" in config.name else "sentence-transformers/all-MiniLM-L6-v2"
    assert resolved["model"]["model_name_or_path"] == expected
    assert resolved["model"]["r"] == 4 and resolved["model"]["lora_alpha"] == 16


@pytest.mark.parametrize("extra, words", [
    (["--model.rank", "3"], ["unrecognized arguments: --model.rank 3", "did you mean --model.r?"]),
    (["--trainer.max_epohcs", "2"], ["did you mean --trainer.max_epochs?"]),
    (["--model.r", "four"], ["model.r", "four"]),
])
def test_unknown_key_or_wrong_type_is_refused(extra, words, capsys):
    """The parser's message as one line (not 75 lines of usage), with a "did you mean", before anything loads."""
    assert main(["fit", "--config", str(ROOT / "configs/sst2.yaml"), *extra]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert err.count("\n") == 1 and err.startswith("error: ")


def test_fit_validate_test_on_real_data(tmp_path, glue_dir, packaged_model):
    """fit writes TensorBoard events and checkpoints; validate --ckpt_path gives back the logged val_acc exactly."""
    common = [
        "--config", str(ROOT / "configs/sst2.yaml"),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
        "--data.data_dir", glue_dir,
        "--data.max_eval_samples", "320",
        "--trainer.log_every_n_steps", "5",
    ]
    cli = cli_main(["fit", *common, "--data.max_train_samples", "960", "--trainer.max_epochs", "2",
                   "--model.learning_rate", "5e-3"])
    log_dir = Path(cli.trainer.log_dir)
    events = EventAccumulator(str(next(log_dir.glob("events.out.tfevents.*"))))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train_loss", "val_loss", "val_acc", "val_f1", "lr", "hp/val_acc"} <= scalars  # `lr`, as the README says
    assert "hp_metric" not in scalars  # val_acc is the hparams metric, not Lightning's -1 placeholder
    # no 0.0 placeholder at step 0 dragging the axis: one point per validation, the real values
    assert [e.value for e in events.Scalars("hp/val_acc")] == [e.value for e in events.Scalars("val_acc")]
    assert len(events.Scalars("train_loss")) >= 5  # readable curves on a short run (60 steps, one point per 10)
    assert (log_dir / "config.yaml").is_file()
    ckpt = cli.trainer.checkpoint_callback
    assert Path(ckpt.last_model_path).name == "last.ckpt"
    best = Path(ckpt.best_model_path)
    assert best.is_file() and best.parent == log_dir / "checkpoints"
    logged = float(ckpt.best_model_score)
    print(logged)
    assert 0.7 < logged <= 1.0

    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        validated = cli_main(["validate", *common, "--ckpt_path", str(best)])
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]  # nothing that looks like a failure
    assert float(validated.trainer.callback_metrics["val_acc"]) == logged  # equal, not approximately

    tested = cli_main(["test", *common, "--ckpt_path", str(best)])
    assert 0.6 < float(tested.trainer.callback_metrics["test_acc"]) <= 1.0
    state = torch.load(best, map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["r"] == 4
    # TensorBoard: the evaluation runs sit inside the run they evaluate, their points on the step where fit logged
    # that checkpoint's validation (on top of the training run's own val_acc point)
    fit_steps = [e.step for e in EventAccumulator(str(log_dir)).Reload().Scalars("val_acc")]
    assert fit_steps[-1] == state["global_step"] - 1
    for stage, tag in (("validate", "val_acc"), ("test", "test_acc")):
        (board,) = (log_dir / stage).glob("version_*/events.out.tfevents.*")
        events = EventAccumulator(str(board))
        events.Reload()
        assert [e.step for e in events.Scalars(tag)] == [state["global_step"] - 1]
    assert sorted(p.name for p in log_dir.parent.iterdir()) == [log_dir.name]  # no new version beside the run


@pytest.mark.parametrize("extra, message", [
    (["--data.data_dir", "/nonexistent/SST-2"], "error: data.data_dir: SST-2 folder /nonexistent/SST-2 does not exist"),
    (["--model.r", "0"], "error: model.r must be an integer >= 1, got r=0"),
    (["--model.lora_alpha", "-1"], "error: model.lora_alpha must be > 0, got lora_alpha=-1"),
    (["--model.lora_dropout", "1.5"], "error: model.lora_dropout must be in [0, 1), got lora_dropout=1.5"),
    (["--model.target_modules", "[nonexistent]"], "error: model.target_modules ['nonexistent'] matched no nn.Linear"),
    (["--data.val_fraction", "1.5"], "error: data.val_fraction must be in (0, 1), got 1.5"),
    (["--model.model_name_or_path", "no-org/no-model"], "error: model.model_name_or_path='no-org/no-model': could not load"),
])
def test_bad_options_are_one_line(extra, message, capsys):
    assert main(["fit", "--config", str(ROOT / "configs/sst2.yaml"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_checkpoints_are_one_line(tmp_path, tiny_ckpt, capsys):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(Path(tiny_ckpt).read_bytes()[:2000])
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    cases = {
        tmp_path / "missing.ckpt": "file not found",
        empty: "file is empty (0 bytes)",
        truncated: "not a readable checkpoint (truncated, or another kind of file)",
        text: "not a readable checkpoint",
    }
    for path, message in cases.items():
        assert main(["validate", "--config", str(ROOT / "configs/sst2.yaml"), "--ckpt_path", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"error: --ckpt_path {path}: {message}" in err and "Traceback" not in err


def test_checkpoint_options_win_and_say_so(tmp_path, tiny_ckpt, tiny_model_dir, toy_glue_dir):
    """C09: LightningCLI rebuilds the model from the checkpoint's hyperparameters; a different
    --model.r on the command line is not silently dropped: a warning names both values."""
    with pytest.warns(UserWarning, match=r"using the checkpoint's model.r=4, not model.r=8"):
        cli = cli_main(["validate", "--config", str(ROOT / "configs/sst2.yaml"),
                        "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
                        "--model.model_name_or_path", tiny_model_dir, "--model.r", "8",
                        "--data.data_dir", toy_glue_dir, "--ckpt_path", tiny_ckpt])
    assert cli.model.hparams.r == 4 and 0 <= float(cli.trainer.callback_metrics["val_acc"]) <= 1


def test_config_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    """The design card's literal `--config sst2.yaml`: found among the package's configs, from the repo root or elsewhere."""
    for cwd in (ROOT, tmp_path):
        monkeypatch.chdir(cwd)
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["fit", "--config", "sst2.yaml", "--print_config"])
        assert exit_info.value.code == 0
        assert yaml.safe_load(capsys.readouterr().out)["model"]["r"] == 4


def test_missing_config_is_one_line_with_a_guess(capsys):
    assert main(["fit", "--config", "sst-2.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --config sst-2.yaml: file not found") and "did you mean sst2.yaml?" in err
    assert err.count("\n") == 1


def test_help_lists_export(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--help"])
    assert exit_info.value.code == 0
    assert "export" in capsys.readouterr().out


def test_optimizer_option_is_refused_not_dropped(capsys):
    """LightningCLI's --optimizer would silently replace AdamW and the schedule: refused in one line."""
    assert main(["fit", "--config", "sst2.yaml", "--optimizer", "Adam"]) == 2
    assert "error: --optimizer: not an option here" in capsys.readouterr().err


def tiny_args(tmp_path, tiny_model_dir, toy_glue_dir, *extra):
    return ["--config", "sst2.yaml", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--model.model_name_or_path", tiny_model_dir,
            "--data.data_dir", toy_glue_dir, "--data.batch_size", "16", *extra]


def test_default_root_dir_holds_the_logs_and_fit_says_where(tmp_path, monkeypatch, tiny_model_dir, toy_glue_dir, capsys):
    """--trainer.default_root_dir is applied (the config's relative save_dir goes under it), and fit ends
    by printing the run folder, the best and last checkpoints and the next commands."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    cli = cli_main(["fit", *tiny_args(tmp_path, tiny_model_dir, toy_glue_dir, "--trainer.max_epochs", "2",
                                      "--trainer.default_root_dir", str(root))])
    run = root / "lightning_logs" / "sst2" / "version_0"
    assert Path(cli.trainer.log_dir) == run and (run / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "lightning_logs").exists()
    out = capsys.readouterr().out
    assert f"Run folder: {run}" in out
    assert f"Best checkpoint (val_acc {float(cli.trainer.checkpoint_callback.best_model_score):.4f}): {run}/checkpoints/epoch=" in out
    assert f"Last checkpoint (step {cli.trainer.global_step}): {run}/checkpoints/last.ckpt" in out
    assert f"python -m lora_lightning validate --config {run}/config.yaml --ckpt_path {run}/checkpoints/epoch=" in out


def test_ckpt_path_takes_runtime_options_and_says_what_differs(tmp_path, monkeypatch, tiny_ckpt, tiny_model_dir, toy_glue_dir):
    """With --ckpt_path, an option that only changes how the model runs is applied (not replaced by the
    checkpoint's), and a data option that differs from the checkpoint's run is said in one line."""
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match=r"data.max_eval_samples=7 here, but the checkpoint's run used data.max_eval_samples=None"):
        cli = cli_main(["validate", *tiny_args(tmp_path, tiny_model_dir, toy_glue_dir, "--data.max_eval_samples", "7",
                                               "--model.merge_for_inference", "true", "--ckpt_path", tiny_ckpt)])
    assert cli.model.hparams.merge_for_inference is True
    assert len(cli.datamodule.datasets["val"]) == 7


def test_resumed_fit_keeps_the_checkpoints_optimizer_and_data_options(tmp_path, monkeypatch, tiny_ckpt, tiny_model_dir, toy_glue_dir):
    """A resumed fit goes on as its run did: the checkpoint's learning rate and data options, each said in one line."""
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning) as caught:
        cli = cli_main(["fit", *tiny_args(tmp_path, tiny_model_dir, toy_glue_dir, "--model.learning_rate", "0.5",
                                          "--data.max_train_samples", "50", "--trainer.max_steps", "8",
                                          "--ckpt_path", tiny_ckpt)])
    messages = [str(w.message) for w in caught]
    assert any("using the checkpoint's model.learning_rate=0.01, not model.learning_rate=0.5" in m for m in messages)
    assert any("the resumed run goes on with its own data.max_train_samples=None (not data.max_train_samples=50" in m
               for m in messages)
    # another length: the schedule goes on as its run had it, and the new stop is said (tiny_ckpt: 6 steps; now 8)
    assert any(m.startswith("resuming at step 6: the learning-rate schedule goes on as its run had it (6 steps, 0 of "
                            "warm-up); trainer.max_epochs / max_steps now stop the run at step 8: steps 6..8 train at rate 0")
               for m in messages), messages
    assert cli.model.lr_schedulers().get_last_lr() == [0.0]
    assert cli.model.hparams.learning_rate == 0.01 and cli.trainer.global_step == 8
    assert cli.datamodule.hparams.max_train_samples is None and len(cli.datamodule.datasets["train"]) == 180


def test_warnings_print_as_one_line_without_a_source_path(tmp_path, tiny_ckpt, tiny_model_dir, toy_glue_dir):
    """From the shell, our warnings read `warning: ...` (not `.../cli.py:151: UserWarning: ...`), and an
    evaluation run says where it wrote."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "lora_lightning", "validate",
                           *tiny_args(tmp_path, tiny_model_dir, toy_glue_dir, "--model.r", "8", "--ckpt_path", tiny_ckpt)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warning: --ckpt_path: using the checkpoint's model.r=4, not model.r=8" in proc.stderr
    assert "cli.py" not in proc.stderr and "LeafSpec" not in proc.stderr and "Tip" not in proc.stderr
    assert "Run folder: lightning_logs/sst2/version_0" in proc.stdout


def test_trainer_settings_that_reach_the_model(tmp_path, monkeypatch, tiny_model_dir, toy_glue_dir):
    """Accumulation and a mid-epoch validation interval: the schedule is sized in optimizer steps, and
    last.ckpt is the end of training."""
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["fit", *tiny_args(tmp_path, tiny_model_dir, toy_glue_dir, "--trainer.max_epochs", "2",
                                      "--trainer.accumulate_grad_batches", "2", "--trainer.val_check_interval", "0.5")])
    steps = 2 * -(-cli.trainer.num_training_batches // 2)  # 12 batches of 16 per epoch -> 6 steps, 2 epochs
    assert cli.model._schedule[1] == cli.trainer.global_step == steps
    last = torch.load(cli.trainer.checkpoint_callback.last_model_path, weights_only=True)
    assert last["global_step"] == steps
    with pytest.warns(UserWarning, match=r"trainer.precision=bf16-true: LoRA and the head train in half precision"):
        cli_main(["fit", *tiny_args(tmp_path, tiny_model_dir, toy_glue_dir, "--trainer.max_steps", "1",
                                    "--trainer.precision", "bf16-true")])


def test_own_data_fit_test_predict_export(tmp_path, monkeypatch, three_class_dir, tiny_model_dir, capsys):
    """configs/own-data.yaml, pointed at 3 string labels in CSV / JSON lines / Parquet / text lines:
    the labels reach the model by linking, it trains well above chance (1/3), logs macro-F1, per-class
    F1 and confusion-matrix figures, and test, predict and the merged export speak the label names."""
    from transformers import pipeline

    monkeypatch.chdir(tmp_path)
    d = three_class_dir
    common = ["--config", "own-data.yaml", "--model.model_name_or_path", tiny_model_dir,
              "--data.train_file", str(d / "train.csv"), "--data.validation_file", str(d / "validation.jsonl"),
              "--data.test_file", str(d / "test.parquet"), "--data.predict_file", str(d / "predict.txt"),
              "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
    cli = cli_main(["fit", *common, "--trainer.max_epochs", "15", "--model.learning_rate", "1e-2"])
    names = {0: "complaint", 1: "praise", 2: "rave"}
    assert cli.model.hparams.num_labels == 3 and cli.model.hparams.id2label == names
    assert cli.model.model.config.id2label == names and cli.model.model.classifier.out_features == 3
    best = cli.trainer.checkpoint_callback
    assert float(best.best_model_score) > 0.8
    events = EventAccumulator(cli.trainer.log_dir, size_guidance={"images": 0})  # 0: keep every image
    events.Reload()
    assert {"val_acc", "val_macro_f1", "val_f1_complaint", "val_f1_praise", "val_f1_rave"} <= set(events.Tags()["scalars"])
    assert len(events.Images("val_confusion_matrix")) == 15  # one per epoch
    tested = cli_main(["test", *common, "--ckpt_path", best.best_model_path])
    assert tested.trainer.callback_metrics["test_acc"] > 0.8 and "test_f1_rave" in tested.trainer.callback_metrics
    predicted = cli_main(["predict", *common, "--ckpt_path", best.best_model_path])
    rows = (Path(predicted.trainer.log_dir) / "predictions.tsv").read_text().splitlines()
    assert rows[0] == "text\tlabel\tprobability" and len(rows) == 7
    assert [r.split("\t")[0] for r in rows[1:]] == (d / "predict.txt").read_text().splitlines()
    assert {r.split("\t")[1] for r in rows[1:]} <= set(names.values())
    assert main(["export", "--ckpt_path", best.best_model_path, "--output_dir", str(tmp_path / "merged")]) == 0
    out = pipeline("text-classification", model=str(tmp_path / "merged"))(["the film is awful", "a superb movie"])
    assert {o["label"] for o in out} <= set(names.values())
    # another label set in the test file than the checkpoint's: one line naming the file's line, its label and the classes
    (tmp_path / "other.csv").write_text("text,label\nfine,a\nbad,b\ngood,c\n")
    capsys.readouterr()
    other = [f"--data.{k}_file={tmp_path / 'other.csv'}" for k in ("train", "validation", "test")]
    assert main(["test", *common, *other, "--ckpt_path", best.best_model_path]) == 2
    err = capsys.readouterr().err
    assert "other.csv, line 2: label 'a' is not one of the classes data.labels=['complaint', 'praise', 'rave']" in err
    assert err.count("\n") == 1


def test_predict_needs_only_the_checkpoint_and_its_file(tmp_path, monkeypatch, three_class_dir, tiny_model_dir):
    """C26: fit on data/train.csv from one folder; move data/ away; from another folder, predict and test with the
    run's config.yaml take the classes from the checkpoint and read only the file they score; a file that is gone
    is one line naming the folder looked in and the config the value came from."""
    import shutil

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    (work / "data").mkdir(parents=True), elsewhere.mkdir()
    for name in ("train.csv", "validation.jsonl", "test.parquet"):
        shutil.copy(three_class_dir / name, work / "data" / name)
    monkeypatch.chdir(work)
    cli = cli_main(["fit", "--config", "own-data.yaml", "--model.model_name_or_path", tiny_model_dir,
                    "--data.train_file", "data/train.csv", "--data.validation_file", "data/validation.jsonl",
                    "--data.test_file", "data/test.parquet", "--data.predict_file", "null",
                    "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"])
    run = Path(cli.trainer.log_dir).resolve()
    best = Path(cli.trainer.checkpoint_callback.best_model_path).resolve()
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"]
    assert saved["train_file"] == str(work / "data" / "train.csv")  # absolute: the run's config resolves anywhere
    shutil.copy(work / "data" / "test.parquet", elsewhere / "test.parquet")
    shutil.move(work / "data", tmp_path / "moved")
    monkeypatch.chdir(elsewhere)
    (elsewhere / "new.txt").write_text("the film is awful\na superb movie\n")
    predicted = cli_main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(best),
                          "--data.predict_file", "new.txt"])
    out = Path(predicted.trainer.log_dir)
    assert out.parent == run / "predict"  # an evaluation run logs inside the run it evaluates
    rows = (out / "predictions.tsv").read_text().splitlines()
    assert len(rows) == 3 and {r.split("\t")[1] for r in rows[1:]} <= {"complaint", "praise", "rave"}
    tested = cli_main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(best),
                       "--data.test_file", "test.parquet"])
    assert "test_acc" in tested.trainer.callback_metrics
    with pytest.raises(DataFileError, match=rf"^data.test_file: {re.escape(str(work / 'data' / 'test.parquet'))}: file not "
                                            rf"found; the value comes from {re.escape(str(run / 'config.yaml'))}: give "
                                            r"--data.test_file the file's path now, or --data.test_file null$"):
        cli_main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(best)])


def test_example_file_not_found_says_where_it_came_from(tmp_path, monkeypatch, tiny_model_dir):
    """A newcomer's first hour: own-data.yaml run from another folder; its example train file is not there. The
    error names the folder looked in and that the value is own-data.yaml's example."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataFileError, match=rf"^data.train_file: examples/support-tickets/train.csv, data.test_file: "
                                            rf"examples/support-tickets/test.jsonl: files not found \(looked for in "
                                            rf"{re.escape(str(tmp_path))}\); the values are own-data.yaml's example files: "
                                            r"give each your own file, or null$"):
        cli_main(["fit", "--config", "own-data.yaml", "--model.model_name_or_path", tiny_model_dir])
    # from the repository root, with a train file of one's own: the example test / predict files are not used silently
    monkeypatch.chdir(ROOT)
    (tmp_path / "mine.csv").write_text("text,label\nfine,a\nbad,b\n")
    with pytest.raises(DataFileError, match=r"^data.test_file, data.predict_file still hold own-data.yaml's example files "
                                            r"beside your data.train_file: give each your own file, or null "
                                            r"\(--data.test_file null --data.predict_file null\)$"):
        cli_main(["fit", "--config", "own-data.yaml", "--model.model_name_or_path", tiny_model_dir,
                  "--data.train_file", str(tmp_path / "mine.csv")])


def test_shipped_own_data_example_reads(monkeypatch):
    """configs/own-data.yaml's files (examples/support-tickets) exist and give 4 string classes."""
    from lora_lightning.data import TextClassificationDataModule

    monkeypatch.chdir(ROOT)
    init = yaml.safe_load((ROOT / "configs/own-data.yaml").read_text())["data"]["init_args"]
    dm = TextClassificationDataModule(**{k: v for k, v in init.items()})
    assert dm.id2label == {0: "account", 1: "billing", 2: "delivery", 3: "technical"}
    raw = dm.load_raw()
    assert len(raw["train"]) == 380 and len(raw["test"]) == 70 and set(raw["test"]["label"]) == {0, 1, 2, 3}


@pytest.mark.parametrize("extra, message", [
    (["--data.batchsize", "3"], "error: --data.batchsize: not an option of the data module; did you mean --data.batch_size?"),
    (["--data.train_file", "my.csv"], "error: --data.train_file: not an option of this config's data module (sst2.yaml's is "
                                      "SST2DataModule, GLUE's SST-2 files); for your own files use --config own-data.yaml"),
    (["--ckpt_path", ""], "error: --ckpt_path is empty"),
])
def test_data_options_and_empty_ckpt_path_are_one_line(extra, message, capsys):
    """The data class is a choice (subclass mode): an option it does not take is still one line."""
    assert main(["test" if "--ckpt_path" in extra else "fit", "--config", str(ROOT / "configs/sst2.yaml"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_label_codes_come_back_as_written(tmp_path, monkeypatch, tiny_model_dir):
    """C23: labels 01, 02, 10 (zero-padded codes) are three classes named as written in the checkpoint, the
    predictions and the merged export's pipeline, never the integers 1, 2, 10; predict takes
    --data.train_file null (C26)."""
    from transformers import pipeline

    from conftest import three_class_rows

    monkeypatch.chdir(tmp_path)
    codes = {"complaint": "01", "praise": "02", "rave": "10"}

    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"{t},{codes[y]}\n" for t, y in three_class_rows(120)))
    (tmp_path / "new.txt").write_text("the film is awful\na superb movie\n")
    cli = cli_main(["fit", "--config", "own-data.yaml", "--model.model_name_or_path", tiny_model_dir,
                    "--data.train_file", "train.csv", "--data.test_file", "null", "--data.predict_file", "null",
                    "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"])
    names = {0: "01", 1: "02", 2: "10"}
    last = cli.trainer.checkpoint_callback.last_model_path
    assert torch.load(last, weights_only=True)["hyper_parameters"]["id2label"] == names
    predicted = cli_main(["predict", "--config", "own-data.yaml", "--model.model_name_or_path", tiny_model_dir,
                          "--data.train_file", "null", "--data.test_file", "null", "--data.predict_file", "new.txt",
                          "--ckpt_path", last])
    rows = (Path(predicted.trainer.log_dir) / "predictions.tsv").read_text().splitlines()
    assert {r.split("\t")[1] for r in rows[1:]} <= {"01", "02", "10"}
    assert main(["export", "--ckpt_path", last, "--output_dir", str(tmp_path / "merged")]) == 0
    (out,) = pipeline("text-classification", model=str(tmp_path / "merged"), top_k=None)(["a superb movie"])
    assert {o["label"] for o in out} == {"01", "02", "10"}


def test_a_run_stopped_by_a_users_error_leaves_no_empty_folder(tmp_path, monkeypatch, tiny_model_dir):
    """A newcomer's first hour: fit stopped by a bad test label (found at setup) leaves no version folder holding
    only a config and an empty event file; a folder with a checkpoint, or one that was there before, is kept."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.csv").write_text("text,label\nfine,a\nbad,b\ngood,a\nawful,b\n")
    (tmp_path / "test.csv").write_text("text,label\nok,c\n")
    args = ["fit", "--config", "own-data.yaml", "--model.model_name_or_path", tiny_model_dir, "--data.train_file",
            "train.csv", "--data.test_file", "test.csv", "--data.predict_file", "null", "--data.val_fraction", "0.5",
            "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu"]
    assert main(args) == 2
    assert not (tmp_path / "lightning_logs" / "own-data").exists()
    (tmp_path / "test.csv").write_text("text,label\nok,a\n")
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "lightning_logs" / "own-data").iterdir()) == ["version_0"]


def test_ckpt_path_last_and_best_mean_the_runs_files(tmp_path, monkeypatch, tiny_model_dir, toy_glue_dir, capsys):
    """C33: `fit --ckpt_path last` resumes the newest run's last.ckpt in its own folder (Lightning would look in the
    new run's empty folder and train from step 0); `validate --config <run>/config.yaml --ckpt_path best` scores the
    best checkpoint that run recorded (Lightning: a ValueError); with no run, one line says to pass a path."""
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tmp_path, tiny_model_dir, toy_glue_dir)
    assert main(["fit", *args, "--ckpt_path", "last"]) == 2
    assert "error: --ckpt_path last: no run's last.ckpt found (looked in lightning_logs/sst2/*/checkpoints)" in capsys.readouterr().err
    first = cli_main(["fit", *args, "--trainer.max_epochs", "1"])
    run = Path(first.trainer.log_dir)
    best_score = float(first.trainer.checkpoint_callback.best_model_score)
    resumed = cli_main(["fit", *args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert Path(resumed.trainer.log_dir) == run and resumed.trainer.global_step == 2 * first.trainer.global_step
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == resumed.trainer.global_step
    best = Path(resumed.trainer.checkpoint_callback.best_model_path)
    validated = cli_main(["validate", "--config", str(run / "config.yaml"), "--ckpt_path", "best"])
    assert validated.config["validate"]["ckpt_path"] == str(best)
    assert float(validated.trainer.callback_metrics["val_acc"]) == float(resumed.trainer.checkpoint_callback.best_model_score)
    assert best_score <= float(resumed.trainer.checkpoint_callback.best_model_score)


@pytest.mark.parametrize("extra, message", [
    (["--trainer.precision", "16-true"], "error: trainer.precision=16-true trains LoRA and the head in float16, where AdamW's eps"),
    (["--trainer.accelerator", "gpu"], "error: trainer.accelerator=gpu: no CUDA GPU on this machine"),
    (["--trainer.devices", "0"], "error: trainer.devices=0: at least one device is needed"),
    (["--trainer.barebones", "true", "--trainer.logger", "false"], "error: trainer: `Trainer(barebones=True, log_every_n_steps=10)`"),
])
def test_trainer_options_that_cannot_run_are_one_line(extra, message, tmp_path, monkeypatch, tiny_model_dir, toy_glue_dir, capsys):
    """C34 and the Trainer's own refusals: one line naming the option, no traceback, no run folder left."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU, on any machine
    assert main(["fit", *tiny_args(tmp_path, tiny_model_dir, toy_glue_dir, "--trainer.max_steps", "2", *extra)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and [l for l in err.splitlines() if not l.startswith("warning")] == [
        next(l for l in err.splitlines() if l.startswith("error"))], err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_fit_without_a_logger_and_predict_into_a_folder_of_ones_own(tmp_path, monkeypatch, tiny_model_dir, toy_glue_dir, capsys):
    """`fit --trainer.logger false` runs (the config's LearningRateMonitor is left out, said); `predict` with a run's
    config and an explicit logger save_dir elsewhere writes there, and says so, instead of into the run folder."""
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tmp_path, tiny_model_dir, toy_glue_dir, "--trainer.max_steps", "2")
    assert main(["fit", *args, "--trainer.logger", "false"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    cli = cli_main(["fit", *args])
    run = Path(cli.trainer.log_dir)
    mine = tmp_path / "mine"
    predicted = cli_main(["predict", "--config", str(run / "config.yaml"), "--trainer.logger.init_args.save_dir", str(mine),
                          "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert Path(predicted.trainer.log_dir).parent.parent == mine
    assert list(mine.rglob("predictions.tsv")) and not list(run.rglob("predictions.tsv"))
