"""Adapter-sized checkpoints (model.py hooks): what is saved, round trips, and refusals by name."""

import pytest
import torch

from conftest import SENTENCES, quiet_trainer, sentence_batch
from lora_lightning.data import SST2DataModule
from lora_lightning.model import LoRAClassifier


def logits(module: LoRAClassifier, model_dir: str) -> torch.Tensor:
    module.eval()
    with torch.no_grad():
        return module(**sentence_batch(model_dir))


def test_checkpoint_holds_only_trainable_tensors(tiny_ckpt, tiny_model_dir):
    """C01 (peft #310): the head is in the saved state; the frozen base is not."""
    state = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    expected = {f"model.bert.encoder.layer.{i}.attention.self.{t}.lora_{m}" for i in range(2)
                for t in ("query", "value") for m in "AB"} | {"model.classifier.weight", "model.classifier.bias"}
    assert set(state["state_dict"]) == expected
    assert not any("base_layer" in k or "embeddings" in k for k in state["state_dict"])
    assert state["hyper_parameters"]["r"] == 4 and "optimizer_states" in state


def test_round_trip_identical_logits(tiny_ckpt, tiny_model_dir):
    first = LoRAClassifier.load_from_checkpoint(tiny_ckpt, map_location="cpu")
    torch.manual_seed(123)  # a different random head before loading must not matter
    second = LoRAClassifier.load_from_checkpoint(tiny_ckpt, map_location="cpu")
    assert torch.equal(logits(first, tiny_model_dir), logits(second, tiny_model_dir))
    fresh = LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8)
    assert not torch.allclose(logits(fresh, tiny_model_dir), logits(first, tiny_model_dir), atol=1e-4)
    state = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(first.model.classifier.weight, state["model.classifier.weight"])


def lora_keys(layer: str, targets: tuple[str, ...]) -> set[str]:
    """Checkpoint keys of LoRA on ``targets`` in both tiny layers; ``layer`` has ``{i}`` and ``{t}`` in it."""
    return {f"model.{layer.format(i=i, t=t)}.lora_{m}" for i in range(2) for t in targets for m in "AB"}


@pytest.mark.parametrize("base, targets, keys", [
    ("tiny_distilbert_dir", ["q_lin", "v_lin"],
     lora_keys("distilbert.transformer.layer.{i}.attention.{t}", ("q_lin", "v_lin"))
     | {f"model.{m}.{p}" for m in ("pre_classifier", "classifier") for p in ("weight", "bias")}),
    ("tiny_roberta_dir", ["query", "value"],
     lora_keys("roberta.encoder.layer.{i}.attention.self.{t}", ("query", "value"))
     | {f"model.classifier.{m}.{p}" for m in ("dense", "out_proj") for p in ("weight", "bias")}),
    ("tiny_nli_dir", ["query", "value"],
     lora_keys("bert.encoder.layer.{i}.attention.self.{t}", ("query", "value"))
     | {"model.classifier.weight", "model.classifier.bias"}),
], ids=["distilbert-C15", "roberta", "bert-3-label-base-C17"])
def test_new_tensors_are_saved_and_round_trip(base, targets, keys, request, toy_glue_dir, tmp_path):
    """C15: DistilBERT's second new head layer, pre_classifier, trains and is saved; after another seed
    ``load_from_checkpoint`` gives identical logits (it was frozen, left out and drawn again on load)."""
    import pytorch_lightning as pl

    model_dir = request.getfixturevalue(base)
    pl.seed_everything(0)
    model = LoRAClassifier(model_dir, target_modules=targets, learning_rate=1e-2)
    trainer = quiet_trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(model, SST2DataModule(model_dir, data_dir=toy_glue_dir, batch_size=16))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    state = torch.load(tmp_path / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert set(state) == keys
    torch.manual_seed(123)  # the new tensors are drawn otherwise on load: the checkpoint must hold them
    again = LoRAClassifier.load_from_checkpoint(tmp_path / "model.ckpt", map_location="cpu")
    assert torch.equal(logits(again, model_dir), logits(model, model_dir))


def test_config_that_differs_from_checkpoint_is_refused(tiny_ckpt, tiny_model_dir, toy_glue_dir):
    """C09 (Lightning #20310): `validate --ckpt_path` builds the model from the config; if its r or
    lora_alpha differs from the checkpoint's, stop before evaluating, naming the option."""
    dm = SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir)
    with pytest.raises(ValueError, match=r"trained with r=4 but this model has r=8, which changes what its weights mean: "
                                         r"build the model with r=4"):
        quiet_trainer().validate(LoRAClassifier(tiny_model_dir, r=8, lora_alpha=8), dm, ckpt_path=tiny_ckpt)
    with pytest.raises(ValueError, match=r"lora_alpha=8.0 but this model has lora_alpha=16.0"):
        quiet_trainer().validate(LoRAClassifier(tiny_model_dir, r=4, lora_alpha=16), dm, ckpt_path=tiny_ckpt)


def test_wrong_rank_is_refused_by_option_then_by_key_and_shapes(tiny_ckpt, tiny_model_dir):
    """Issue 19: load_from_checkpoint(r=8) names the option (Lightning would write 8 over the saved 4 before
    any check saw it); a checkpoint whose saved r was edited still fails on its tensors' shapes."""
    from lora_lightning.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"^checkpoint was trained with r=4 but this model has r=8, which changes "
                                              r"what its weights mean: build the model with r=4 \(or leave r out of "
                                              r"load_from_checkpoint\)$"):
        LoRAClassifier.load_from_checkpoint(tiny_ckpt, map_location="cpu", r=8)
    edited = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    edited["hyper_parameters"]["r"] = 8
    with pytest.raises(ValueError, match=r"'model.bert.encoder.layer.0.attention.self.query.lora_A' has shape "
                                         r"\(4, 32\) in the checkpoint but \(8, 32\) in the model"):
        LoRAClassifier(tiny_model_dir, r=8, lora_alpha=8).on_load_checkpoint(edited)


def test_missing_head_is_refused(tiny_ckpt, tmp_path):
    """C01: a checkpoint without the head is an error naming it, never a silently random head."""
    state = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    del state["state_dict"]["model.classifier.weight"]
    torch.save(state, tmp_path / "no-head.ckpt")
    with pytest.raises(ValueError, match=r"key 'model.classifier.weight' of shape \(2, 32\) is missing"):
        LoRAClassifier.load_from_checkpoint(tmp_path / "no-head.ckpt", map_location="cpu")


def test_other_targets_are_refused(tiny_ckpt, tiny_model_dir):
    with pytest.raises(ValueError, match=r"trained with target_modules=\['query', 'value'\] but this model has "
                                         r"target_modules=\['query', 'key', 'value'\]"):
        LoRAClassifier.load_from_checkpoint(tiny_ckpt, map_location="cpu", target_modules=["query", "key", "value"])
    edited = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    edited["hyper_parameters"]["target_modules"] = ["query", "key", "value"]
    with pytest.raises(ValueError, match=r"attention.self.key.lora_A' of shape \(4, 32\) is missing"):
        LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8, target_modules=["query", "key", "value"]).on_load_checkpoint(edited)


def test_resume_and_merged_inference(tiny_ckpt, tiny_model_dir, toy_glue_dir):
    """fit --ckpt_path resumes from an adapter-sized checkpoint; merged test == unmerged test."""
    model = LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8, learning_rate=1e-2)
    dm = SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir, batch_size=16)
    trainer = quiet_trainer(max_steps=8, limit_val_batches=0)
    trainer.fit(model, dm, ckpt_path=tiny_ckpt)
    assert trainer.global_step == 8
    unmerged = quiet_trainer().test(model, dm, verbose=False)[0]
    merged_model = LoRAClassifier.load_from_checkpoint(tiny_ckpt, map_location="cpu", merge_for_inference=True)
    plain_model = LoRAClassifier.load_from_checkpoint(tiny_ckpt, map_location="cpu")
    a = quiet_trainer().test(merged_model, dm, verbose=False)[0]
    b = quiet_trainer().test(plain_model, dm, verbose=False)[0]
    assert a["test_acc"] == b["test_acc"] and abs(a["test_loss"] - b["test_loss"]) < 1e-5
    assert not any(m.merged for m in merged_model.modules() if hasattr(m, "merged"))  # unmerged after test
    assert len(SENTENCES) == 4 and 0 <= unmerged["test_acc"] <= 1


class Payload:
    """Stands for arbitrary pickled code inside a checkpoint."""

    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_never_run(tiny_ckpt, tmp_path, capsys):
    state = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    state["extra"] = Payload()
    torch.save(state, tmp_path / "evil.ckpt")
    with pytest.raises(Exception, match="Weights only load failed"):
        LoRAClassifier.load_from_checkpoint(tmp_path / "evil.ckpt", map_location="cpu")
    assert "pickled code ran" not in capsys.readouterr().out


def test_resumed_run_equals_uninterrupted(tiny_model_dir, toy_glue_dir, tmp_path):
    """Stop after epoch 1, resume from last.ckpt: weights and val_acc equal the uninterrupted run's exactly (CPU)."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    class StopAfterFirstEpoch(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    def run(max_epochs, dirpath, ckpt_path=None, stop=False):
        pl.seed_everything(7)
        model = LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8, lora_dropout=0.1, learning_rate=1e-2)
        dm = SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir, batch_size=16)
        t = quiet_trainer(max_epochs=max_epochs, enable_checkpointing=True,
                          callbacks=[ModelCheckpoint(dirpath=dirpath, save_last=True, monitor="val_acc", mode="max")]
                          + ([StopAfterFirstEpoch()] if stop else []))
        t.fit(model, dm, ckpt_path=ckpt_path)
        return model, float(t.callback_metrics["val_acc"])

    full, full_acc = run(3, tmp_path / "a")
    again, again_acc = run(3, tmp_path / "c")  # reproducible: same seed, same numbers
    assert again_acc == full_acc and all(torch.equal(a, b) for a, b in zip(full.parameters(), again.parameters()))
    run(3, tmp_path / "b", stop=True)  # "killed" after the first epoch's checkpoint
    resumed, resumed_acc = run(3, tmp_path / "b", ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert resumed_acc == full_acc
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name


def test_interrupted_checkpoint_write_keeps_the_old_file(tiny_ckpt, tmp_path, monkeypatch):
    """Lightning writes a checkpoint to a temporary file and moves it over the target only at the end
    (an fsspec transaction): a kill before that leaves the previous last.ckpt whole and loadable."""
    import shutil

    from fsspec.implementations.local import LocalFileOpener
    from pytorch_lightning.plugins.io import TorchCheckpointIO

    target = tmp_path / "last.ckpt"
    shutil.copy(tiny_ckpt, target)
    before = target.read_bytes()
    state = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    state["global_step"] = 999

    def killed(self):
        raise KeyboardInterrupt("killed before the move")

    monkeypatch.setattr(LocalFileOpener, "commit", killed)
    with pytest.raises(KeyboardInterrupt):
        TorchCheckpointIO().save_checkpoint(state, target)  # what ModelCheckpoint's save goes through
    assert target.read_bytes() == before
    assert torch.load(target, map_location="cpu", weights_only=True)["global_step"] != 999
    monkeypatch.undo()
    TorchCheckpointIO().save_checkpoint(state, target)
    assert torch.load(target, map_location="cpu", weights_only=True)["global_step"] == 999


def test_variant_options_are_checked_on_load(tiny_ckpt, tiny_model_dir, tmp_path):
    """A DoRA checkpoint holds its magnitudes and loads only as DoRA; a checkpoint from before the variant
    options existed (no use_dora / use_rslora saved) is a plain LoRA one and still loads."""
    from torch.utils.data import DataLoader

    module = LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8, use_dora=True, learning_rate=1e-2)
    batch = {**sentence_batch(tiny_model_dir), "labels": torch.tensor([1, 0, 1, 0])}
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=DataLoader([batch] * 2, batch_size=None))
    trainer.save_checkpoint(tmp_path / "dora.ckpt")
    state = torch.load(tmp_path / "dora.ckpt", weights_only=True)
    assert sum(k.endswith("lora_magnitude") for k in state["state_dict"]) == 2 * 2  # 2 layers x (query, value)
    with pytest.raises(ValueError, match=r"trained with use_dora=True but this model has use_dora=False"):
        LoRAClassifier.load_from_checkpoint(tmp_path / "dora.ckpt", map_location="cpu", use_dora=False)
    edited = torch.load(tmp_path / "dora.ckpt", map_location="cpu", weights_only=True)
    edited["hyper_parameters"]["use_dora"] = False
    with pytest.raises(ValueError, match=r"unexpected key '.*query.lora_magnitude' of shape \(32,\)"):
        LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8).on_load_checkpoint(edited)
    plain = LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8)  # a model built from a config without the option (C09)
    with pytest.raises(ValueError, match=r"trained with use_dora=True but this model has use_dora=False"):
        quiet_trainer().validate(plain, DataLoader([batch], batch_size=None), ckpt_path=tmp_path / "dora.ckpt")
    old = torch.load(tiny_ckpt, weights_only=True)
    for name in ("use_dora", "use_rslora", "loraplus_lr_ratio", "backbone_dropout"):
        old["hyper_parameters"].pop(name, None)
    torch.save(old, tmp_path / "old.ckpt")
    assert LoRAClassifier.load_from_checkpoint(tmp_path / "old.ckpt", map_location="cpu").hparams.use_dora is False


def three_label_ckpt(model_dir: str, path) -> str:
    """A checkpoint of a 3-label model (test_model.NAMES) after 2 steps on the 3-class toy batches."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from test_model import NAMES, class_batches

    pl.seed_everything(0)
    module = LoRAClassifier(model_dir, r=4, lora_alpha=8, learning_rate=1e-2, num_labels=3, id2label=NAMES)
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=DataLoader(class_batches(2), batch_size=None))
    trainer.save_checkpoint(path)
    return str(path)


def test_checkpoint_of_other_labels_is_refused(tiny_model_dir, tmp_path):
    """Issue 12: a 3-label checkpoint is refused, in one line naming both label lists, by a model with other
    names (same width) or other labels; it loads with its own, whether id2label's keys are ints or strings."""
    from torch.utils.data import DataLoader

    from lora_lightning.errors import CheckpointError
    from test_model import NAMES, class_batches

    ckpt = three_label_ckpt(tiny_model_dir, tmp_path / "three.ckpt")
    state = torch.load(ckpt, weights_only=True)
    assert state["hyper_parameters"]["num_labels"] == 3 and state["hyper_parameters"]["id2label"] == NAMES
    assert state["state_dict"]["model.classifier.weight"].shape == (3, 32)
    val = DataLoader(class_batches(1), batch_size=None)
    other = LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8, num_labels=3, id2label={0: "low", 1: "high", 2: "mid"})
    with pytest.raises(CheckpointError, match=r"^checkpoint was trained with labels \['low', 'high', 'so so'\], this model "
                                              r"has \['low', 'high', 'mid'\] \(id2label, from the data's train file\): build the model with the checkpoint's "
                                              r"num_labels and id2label \(or leave them out of load_from_checkpoint\)$"):
        quiet_trainer().validate(other, val, ckpt_path=ckpt)
    with pytest.raises(CheckpointError, match=r"labels \['low', 'high', 'so so'\], this model has \['negative', 'positive'\]"):
        LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8).on_load_checkpoint(torch.load(ckpt, weights_only=True))
    with pytest.raises(CheckpointError, match=r"this model has \['LABEL_0', 'LABEL_1', 'LABEL_2', 'LABEL_3'\]"):
        LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8, num_labels=4).on_load_checkpoint(torch.load(ckpt, weights_only=True))
    state["hyper_parameters"]["id2label"] = {str(k): v for k, v in NAMES.items()}  # as from a YAML round trip
    torch.save(state, tmp_path / "str-keys.ckpt")
    again = LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8, num_labels=3, id2label=NAMES)
    quiet_trainer().validate(again, val, ckpt_path=tmp_path / "str-keys.ckpt", verbose=False)
    assert torch.equal(again.model.classifier.weight, state["state_dict"]["model.classifier.weight"])
    assert LoRAClassifier.load_from_checkpoint(tmp_path / "str-keys.ckpt").model.config.id2label == NAMES


def test_checkpoint_from_before_labels_were_options_is_sst2(tiny_ckpt, tiny_model_dir, tmp_path):
    """A checkpoint saved before num_labels/id2label existed (neither in its hyperparameters) had SST-2's two
    classes: it loads into a default model, and a 3-label model refuses it by both label lists."""
    from lora_lightning.errors import CheckpointError
    from test_model import NAMES

    old = torch.load(tiny_ckpt, weights_only=True)
    for name in ("num_labels", "id2label"):
        old["hyper_parameters"].pop(name, None)
    torch.save(old, tmp_path / "old.ckpt")
    loaded = LoRAClassifier.load_from_checkpoint(tmp_path / "old.ckpt", map_location="cpu")
    assert loaded.model.config.id2label == {0: "negative", 1: "positive"} and loaded.hparams.num_labels == 2
    assert torch.equal(loaded.model.classifier.weight, old["state_dict"]["model.classifier.weight"])
    LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8).on_load_checkpoint(torch.load(tmp_path / "old.ckpt", weights_only=True))
    with pytest.raises(CheckpointError, match=r"trained with labels \['negative', 'positive'\], this model has "
                                              r"\['low', 'high', 'so so'\]"):
        LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8, num_labels=3, id2label=NAMES).on_load_checkpoint(old)


def test_resume_options_from_python(tiny_ckpt, tiny_model_dir, toy_glue_dir):
    """Issue 18: resuming from Python with LoRA+ switched on is one line naming the option (never torch's
    parameter-group error); another learning rate / warm-up is said in one warning each, the checkpoint's going on."""
    from lora_lightning.errors import CheckpointError

    dm = SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir, batch_size=16)
    plus = LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8, learning_rate=1e-2, loraplus_lr_ratio=16.0)
    with pytest.raises(CheckpointError, match=r"^checkpoint was trained with loraplus_lr_ratio=None but this run has "
                                              r"loraplus_lr_ratio=16.0: its optimizer state has 1 parameter group\(s\), "
                                              r"this run's 2"):
        quiet_trainer(max_steps=8, limit_val_batches=0).fit(plus, dm, ckpt_path=tiny_ckpt)
    other = LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8, learning_rate=5e-3, warmup_ratio=0.2)
    with pytest.warns(UserWarning) as caught:
        quiet_trainer(max_steps=8, limit_val_batches=0).fit(other, dm, ckpt_path=tiny_ckpt)
    said = [str(w.message) for w in caught if str(w.message).startswith("resuming")]
    assert any("learning_rate=0.01, this model has 0.005; the run goes on with the checkpoint's" in m for m in said)
    assert any(m.startswith("resuming: warmup_ratio=0.06 from the checkpoint (this model has 0.2)") for m in said)
    assert other.hparams.warmup_ratio == 0.06 and other.trainer.optimizers[0].param_groups[0]["initial_lr"] == 0.01
