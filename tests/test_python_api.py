"""The package from Python (issue 19, C22, C25): a LightningModule, a DataModule and a LoRA module used with the
user's own Trainer, load_from_checkpoint and inject_lora, on tiny models; no CLI. And docs/python.md's snippets."""

import re
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from conftest import SENTENCES, quiet_trainer, sentence_batch, three_class_rows, toy_rows
from lora_lightning.data import SST2DataModule, TextClassificationDataModule
from lora_lightning.errors import CheckpointError, DataFileError, OptionError
from lora_lightning.lora import LoRALinear, inject_lora, mark_only_lora_as_trainable, merge_and_unload, merge_lora
from lora_lightning.model import LoRAClassifier

ROOT = Path(__file__).resolve().parents[1]


def write_csv(path: Path, rows) -> Path:
    import csv

    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def test_trainer_predict_returns_rows_in_input_order(tiny_model_dir, toy_glue_dir, tmp_path):
    """Issue 19.1: with rows of many lengths, row i of trainer.predict's output is the prediction for line i of
    predict_file (each compared with the model run on that line alone)."""
    lines = [" ".join(["the film is"] * (1 + (i * 7) % 9)) + (" good" if i % 2 else " bad") for i in range(23)]
    (tmp_path / "p.txt").write_text("".join(line + "\n" for line in lines))
    dm = SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir, predict_file=str(tmp_path / "p.txt"), eval_batch_size=4)
    pl.seed_everything(0)
    model = LoRAClassifier(tiny_model_dir, lora_dropout=0.0, backbone_dropout=0.0)
    torch.nn.init.normal_(model.model.classifier.weight)  # predictions that differ from row to row
    probs = torch.cat(quiet_trainer().predict(model, datamodule=dm))
    assert probs.shape == (23, 2)
    model.eval()
    with torch.no_grad():
        alone = torch.cat([model(**dm.tokenizer([line], return_tensors="pt")).softmax(-1) for line in lines])
    torch.testing.assert_close(probs, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("override", [{"lora_alpha": 64.0}, {"use_rslora": True}, {"r": 2},
                                      {"id2label": {0: "positive", 1: "negative"}}, {"num_labels": 3}])
def test_load_from_checkpoint_refuses_overrides_that_change_the_weights(tiny_ckpt, override):
    """Issue 19.2: an override that changes what the weights mean is refused by name (Lightning writes it over the
    saved value before any hook sees it); options that change how the model runs are taken."""
    name = next(iter(override))
    with pytest.raises(CheckpointError, match=rf"^checkpoint was trained with ({name}=|labels)"):
        LoRAClassifier.load_from_checkpoint(tiny_ckpt, **override)
    merged = LoRAClassifier.load_from_checkpoint(tiny_ckpt, merge_for_inference=True, lora_alpha=8.0)  # 8: its own
    assert merged.hparams.merge_for_inference and not merged.training  # eval mode, as from_pretrained returns


def test_classes_come_from_the_data_module(tiny_model_dir, tmp_path):
    """Issue 19.3: a 3-class DataModule and a 2-class model: one line at fit start saying what to pass; ham/spam
    against the default negative/positive: the model takes the data's names and says so, and its export and
    predictions use them."""
    rows = [(t, "ham" if y else "spam") for t, y in toy_rows(60)]
    dm2 = TextClassificationDataModule(str(write_csv(tmp_path / "hs.csv", rows)), model_name_or_path=tiny_model_dir,
                                       batch_size=8)
    dm3 = TextClassificationDataModule(str(write_csv(tmp_path / "three.csv", three_class_rows(60))),
                                       model_name_or_path=tiny_model_dir, batch_size=8)
    with pytest.raises(OptionError, match=r"^the data has 3 classes \['complaint', 'praise', 'rave'\], but the model was "
                                          r"built for 2 \['negative', 'positive'\]: build it with num_labels=3, id2label="):
        quiet_trainer(max_steps=1).fit(LoRAClassifier(tiny_model_dir), datamodule=dm3)
    model = LoRAClassifier(tiny_model_dir)
    quiet_trainer(max_steps=2, limit_val_batches=0).fit(model, datamodule=dm2)
    assert model.label_names == ["ham", "spam"] and model.model.config.id2label == {0: "ham", 1: "spam"}
    assert model.hparams.id2label == {0: "ham", 1: "spam"}


def dropout_run(tiny_model_dir, toy_glue_dir, seed: int, seed_everything: bool = False):
    """Weights after 4 steps with dropout, and what a callback drew from the global generator at each step."""
    class Draw(pl.Callback):
        def __init__(self):
            self.drawn = []

        def on_train_batch_end(self, *args):
            self.drawn.append(torch.rand(1).item())

    (pl.seed_everything if seed_everything else torch.manual_seed)(seed)
    if not seed_everything:
        import os

        os.environ.pop("PL_GLOBAL_SEED", None)
    model = LoRAClassifier(tiny_model_dir, lora_dropout=0.5, learning_rate=1e-2)
    draw = Draw()
    torch.manual_seed(seed)  # the same initial weights for every run of this seed; dropout is what differs
    quiet_trainer(max_steps=4, limit_val_batches=0, callbacks=[draw], deterministic=False).fit(
        model, SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir, batch_size=8))
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_A" in k}, draw.drawn


def test_the_users_random_state_is_theirs(tiny_model_dir, toy_glue_dir):
    """Issue 19.4: the global generator is not reseeded: a callback draws different numbers at each step; without
    seed_everything, torch.manual_seed decides the dropout masks (two seeds, two results; one seed twice, one)."""
    a, drawn_a = dropout_run(tiny_model_dir, toy_glue_dir, 1)
    a_again, drawn_again = dropout_run(tiny_model_dir, toy_glue_dir, 1)
    b, drawn_b = dropout_run(tiny_model_dir, toy_glue_dir, 2)
    assert len(set(drawn_a)) == 4 and drawn_a == drawn_again and drawn_a != drawn_b
    assert all(torch.equal(a[k], a_again[k]) for k in a)
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_python_values_are_stored_plain(tiny_model_dir, toy_glue_dir, tmp_path):
    """Issue 19.5 and C22: numpy numbers, pathlib paths, a str for a list, a list for id2label are accepted, stored as
    plain Python values, and the checkpoint of a run built from them loads with weights_only=True."""
    model = LoRAClassifier(Path(tiny_model_dir), r=np.int64(4), lora_alpha=np.float64(8), learning_rate=np.float32(1e-2),
                           target_modules="query", num_labels=np.int64(2), id2label=["neg", "pos"])
    hp = model.hparams
    assert (type(hp.r), type(hp.lora_alpha), type(hp.learning_rate)) == (int, float, float)
    assert hp.model_name_or_path == tiny_model_dir and hp.target_modules == ["query"] and len(model.lora_modules) == 2
    assert hp.id2label == {0: "neg", 1: "pos"}
    keys = {np.int64(0): "neg", np.int64(1): "pos"}  # id2label from np.unique
    assert LoRAClassifier(tiny_model_dir, id2label=keys).hparams.id2label == {0: "neg", 1: "pos"}
    dm = SST2DataModule(Path(tiny_model_dir), data_dir=Path(toy_glue_dir), batch_size=np.int64(16), val_fraction=np.float64(0.1))
    assert type(dm.hparams.batch_size) is int and dm.hparams.data_dir == toy_glue_dir
    trainer = quiet_trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    state = torch.load(tmp_path / "plain.ckpt", weights_only=True)  # no pathlib / numpy object inside
    assert state["hyper_parameters"]["model_name_or_path"] == tiny_model_dir
    assert LoRAClassifier.load_from_checkpoint(tmp_path / "plain.ckpt").hparams.r == 4


def test_checkpoint_with_an_unloadable_object_names_it(tiny_ckpt, tmp_path):
    """C22: a checkpoint written before values were made plain holds a PosixPath: the error names that object and
    what to do, not 'truncated, or another kind of file'."""
    from lora_lightning.checkpoint import check_checkpoint

    state = torch.load(tiny_ckpt, weights_only=True)
    state["hyper_parameters"]["model_name_or_path"] = Path("/somewhere")
    torch.save(state, tmp_path / "old.ckpt")
    with pytest.raises(CheckpointError, match=r"holds a pathlib.PosixPath object, which safe loading \(weights_only\) "
                                              r"refuses"):
        check_checkpoint(tmp_path / "old.ckpt")
    with pytest.raises(CheckpointError, match=r"pathlib.PosixPath"):
        LoRAClassifier.load_from_checkpoint(tmp_path / "old.ckpt", merge_for_inference=True)


def test_merge_and_unload_saves_a_model_transformers_loads(tiny_ckpt, tmp_path):
    """Issue 19.6: merge_and_unload then save_pretrained writes plain Linear keys; transformers loads the folder with
    our logits (merge_lora alone keeps the wrapper's keys, which transformers would not load)."""
    from transformers import AutoModelForSequenceClassification

    model = LoRAClassifier.load_from_checkpoint(tiny_ckpt)
    batch = sentence_batch(model.hparams.model_name_or_path)
    with torch.no_grad():
        expected = model(**batch)
    inner = merge_and_unload(model.model)
    assert not any(isinstance(m, LoRALinear) for m in inner.modules())
    inner.save_pretrained(tmp_path / "merged")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, expected, atol=1e-5, rtol=1e-4)


def test_modules_to_save_as_peft_has_them(tiny_distilbert_dir, tiny_model_dir):
    """Issue 19.8: mark_only_lora_as_trainable(distilbert) trains the new pre_classifier, as PEFT's SEQ_CLS does;
    a str is one name; a DataModule used before setup says to call setup."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_distilbert_dir, num_labels=2)
    inject_lora(model, "q_lin", r=2)
    trainable = mark_only_lora_as_trainable(model, "classifier")
    assert {n for n in trainable if "lora_" not in n} == {"pre_classifier.weight", "pre_classifier.bias",
                                                          "classifier.weight", "classifier.bias"}
    dm = TextClassificationDataModule("train.csv", model_name_or_path=tiny_model_dir)
    with pytest.raises(DataFileError, match=r"not set up: call setup\('validate'\) \(or let a Trainer do it\) before "
                                            r"val_dataloader\(\)"):
        dm.val_dataloader()


def test_model_states_survive_state_dict_round_trips(tiny_ckpt, tiny_model_dir):
    """Issue 19.9: a merged model's state_dict holds the unmerged weights, so loading it into an unmerged model (or a
    merged one) applies the update once; eval and half precision round trip too; the wrapper gives .weight/.bias."""
    source = LoRAClassifier.load_from_checkpoint(tiny_ckpt)
    batch = sentence_batch(tiny_model_dir)
    with torch.no_grad():
        expected = source(**batch)
    merge_lora(source.model)
    fresh = LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8).eval()
    fresh.load_state_dict(source.state_dict())
    also_merged = LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8).eval()
    merge_lora(also_merged.model)
    also_merged.load_state_dict(source.state_dict())
    with torch.no_grad():
        for other in (source, fresh, also_merged):
            torch.testing.assert_close(other(**batch), expected, atol=1e-5, rtol=1e-4)
    half = LoRAClassifier.load_from_checkpoint(tiny_ckpt).to(torch.bfloat16)
    again = LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8).to(torch.bfloat16).eval()
    again.load_state_dict(half.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(half.state_dict().values(), again.state_dict().values()))
    query = source.model.bert.encoder.layer[0].attention.self.query
    assert query.weight is query.base_layer.weight and query.bias is query.base_layer.bias
    assert query.weight.shape == (32, 32)


def test_bf16_model_runs_outside_the_trainer(tiny_model_dir, toy_glue_dir, tmp_path):
    """C25: trained with a bfloat16 base under bf16-mixed (plain, and DoRA + rsLoRA), loaded, and called without
    autocast: logits, and the classes the Trainer's own predict gives."""
    for options in ({}, {"use_dora": True, "use_rslora": True}):
        pl.seed_everything(0)
        model = LoRAClassifier(tiny_model_dir, torch_dtype="bfloat16", learning_rate=1e-2, **options)
        trainer = quiet_trainer(max_steps=3, limit_val_batches=0, precision="bf16-mixed")
        trainer.fit(model, SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir, batch_size=16))
        trainer.save_checkpoint(tmp_path / "bf16.ckpt")
        loaded = LoRAClassifier.load_from_checkpoint(tmp_path / "bf16.ckpt")
        batch = sentence_batch(tiny_model_dir)
        with torch.no_grad():
            logits = loaded(**batch)  # no autocast
        assert logits.dtype == torch.float32 and logits.shape == (4, 2)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            inside = loaded(**batch)
        torch.testing.assert_close(logits.softmax(-1), inside.float().softmax(-1), atol=0.02, rtol=0)


def test_docs_python_snippets(tiny_model_dir, tmp_path, monkeypatch):
    """docs/python.md: every snippet, top to bottom in one namespace, on the tiny model and the shipped example files
    (one epoch)."""
    text = (ROOT / "docs" / "python.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))
    assert code.count("trainer.fit") == 1 and "merge_and_unload" in code
    # offline, transformers cannot resolve the packaged model's id itself: the snippets go through resolve_model_path
    assert 'from_pretrained("sentence-transformers/' not in code
    code = (code.replace("sentence-transformers/all-MiniLM-L6-v2", tiny_model_dir)
                .replace("examples/support-tickets/", str(ROOT / "examples" / "support-tickets") + "/")
                .replace("max_epochs=3", "max_epochs=1"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/python.md", "exec"), namespace)  # noqa: S102
    assert namespace["probs"].shape == (len((ROOT / "examples/support-tickets/predict.txt").read_text().splitlines()), 4)
    assert namespace["logits"].shape == (2, 4)
    assert len(namespace["names"]) == 2 * 2 and (tmp_path / "tickets-merged" / "config.json").is_file()
