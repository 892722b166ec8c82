"""LoRAClassifier (model.py): what trains, what it learns, and how it fails."""

import pytest
import pytorch_lightning as pl
import torch

from conftest import quiet_trainer
from lora_lightning.data import SST2DataModule
from lora_lightning.model import LoRAClassifier


trainer = quiet_trainer


def test_trainable_parameters_exact(tiny_model_dir):
    model = LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    # 2 layers x (query, value) x r=4 x (32 in + 32 out) + head 32 x 2 + 2
    assert sum(trainable.values()) == 2 * 2 * 4 * (32 + 32) + 66 == 1090
    assert {n for n in trainable if "lora_" not in n} == {"model.classifier.weight", "model.classifier.bias"}
    with_pooler = LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8, train_pooler=True)
    assert sum(p.numel() for p in with_pooler.parameters() if p.requires_grad) == 1090 + 32 * 32 + 32
    assert model.hparams.r == 4 and model.hparams.lora_alpha == 8 and model.model.training
    assert model.model.config.id2label == {0: "negative", 1: "positive"}


@pytest.mark.parametrize("kw, error, message", [
    ({"r": 0}, ValueError, r"model: r must be an integer >= 1"),
    ({"target_modules": ["nonexistent"]}, ValueError, r"model: target_modules \['nonexistent'\] matched no nn.Linear"),
    ({"warmup_ratio": 1.0}, ValueError, r"model.warmup_ratio must be in \[0, 1\)"),
    ({"learning_rate": 0.0}, ValueError, r"model.learning_rate must be > 0"),
])
def test_bad_options(tiny_model_dir, kw, error, message):
    with pytest.raises(error, match=message):
        LoRAClassifier(tiny_model_dir, **kw)


def test_unreachable_model_id_says_what_to_do():
    with pytest.raises(OSError, match=r"model.model_name_or_path='no-such-org/no-such-model'.*local folder"):
        LoRAClassifier("no-such-org/no-such-model")


def test_tiny_model_learns_toy_set(tiny_model_dir, toy_glue_dir):
    """A random tiny BERT with LoRA learns a one-word-decides set: val loss drops, accuracy far above chance."""
    pl.seed_everything(0)
    model = LoRAClassifier(tiny_model_dir, r=8, lora_alpha=16, lora_dropout=0.0, learning_rate=1e-2, warmup_ratio=0.0)
    dm = SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir, batch_size=16, val_fraction=0.2)
    t = trainer(max_epochs=25, check_val_every_n_epoch=25, num_sanity_val_steps=0)
    before = t.validate(model, dm, verbose=False)[0]
    t.fit(model, dm)
    after = t.validate(model, dm, verbose=False)[0]
    print(before, after)
    assert after["val_loss"] < before["val_loss"] - 0.3
    assert after["val_acc"] >= 0.9


def test_packaged_model_learns_real_sst2(glue_dir, packaged_model):
    """The packaged MiniLM with LoRA, 4,000 real SST-2 sentences, one epoch: val_acc >= 0.80 (chance ~0.55)."""
    pl.seed_everything(0)
    model = LoRAClassifier(packaged_model, learning_rate=2e-3)
    dm = SST2DataModule(packaged_model, data_dir=glue_dir, max_train_samples=4000, max_eval_samples=1000)
    t = trainer(max_epochs=1)
    t.fit(model, dm)
    metrics = t.validate(model, dm, verbose=False)[0]
    print(metrics)
    assert metrics["val_acc"] >= 0.80
