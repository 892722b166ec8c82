"""LoRAClassifier (model.py): what trains, what it learns, and how it fails."""

import logging

import pytest
import pytorch_lightning as pl
import torch

from conftest import quiet_trainer, sentence_batch
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
    ({"r": 0}, ValueError, r"^r must be an integer >= 1"),
    ({"target_modules": ["nonexistent"]}, ValueError, r"^target_modules \['nonexistent'\] matched no nn.Linear"),
    ({"warmup_ratio": 1.0}, ValueError, r"^warmup_ratio must be in \[0, 1\)"),
    ({"learning_rate": 0.0}, ValueError, r"^learning_rate must be > 0"),
    # issue 19: Python values of the wrong type are refused when built, naming the argument
    ({"r": 4.5}, ValueError, r"^r must be an integer, got 4.5 \(float\)"),
    ({"lora_alpha": "16"}, ValueError, r"^lora_alpha must be a number, got '16' \(str\)"),
    ({"target_modules": ["query", 3]}, ValueError, r"^target_modules must be a list of names \(strings\)"),
    ({"id2label": "negative,positive"}, ValueError, r"^id2label must be a dict \{class id: name\} or a list of names"),
    ({"use_dora": 1}, ValueError, r"^use_dora must be true or false, got 1 \(int\)"),
])
def test_bad_options(tiny_model_dir, kw, error, message):
    """From Python the error names the argument (``r``); the command line names ``model.r`` (test_cli)."""
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


def test_padding_is_masked_and_long_rows_truncated(tiny_model_dir, tmp_path):
    """C07 (transformers #5500, #2446): a sentence's logits don't depend on what it is batched with;
    long rows are cut to max_length, ending with [SEP]."""
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from conftest import write_tsv

    model = LoRAClassifier(tiny_model_dir).eval()
    long = " ".join(["the", "film", "is", "very", "dull"] * 6)
    d = tmp_path / "SST-2"
    d.mkdir()
    write_tsv(d / "train.tsv", "sentence\tlabel", [("great fun", 1), (" ".join(["good"] * 600), 1)] * 10)
    write_tsv(d / "dev.tsv", "sentence\tlabel", [("great fun", 1), (long, 0)])
    dm = SST2DataModule(tiny_model_dir, data_dir=str(d), max_length=32, eval_batch_size=2, sort_eval_by_length=False,
                        val_split="random")
    dm.setup("fit")
    assert {len(ids) for ids in dm.datasets["train"]["input_ids"]} == {4, 32}
    assert all(ids[-1] == dm.tokenizer.sep_token_id for ids in dm.datasets["train"]["input_ids"])
    collate = DataCollatorWithPadding(AutoTokenizer.from_pretrained(tiny_model_dir))
    alone = collate([{k: v for k, v in dm.datasets["test"][0].items() if k not in ("labels", "length", "full_length")}])
    pair = next(iter(dm.test_dataloader()))
    assert pair["input_ids"].shape == (2, 32) and pair["attention_mask"][0].tolist() == [1] * 4 + [0] * 28
    with torch.no_grad():
        a = model(**alone)
        b = model(**{k: v for k, v in pair.items() if k != "labels"})
    torch.testing.assert_close(b[0], a[0], atol=1e-5, rtol=0)


class StubClassifier(LoRAClassifier):
    """Right on every row except the third batch of an epoch (and every training row)."""

    def _shared_step(self, batch):
        labels = batch["labels"]
        wrong = self.training or self._batch_idx == 2
        preds = 1 - labels if wrong else labels
        logits = torch.nn.functional.one_hot(preds, 2).float() * 5
        logits = logits + 0 * sum(p.sum() for p in self.parameters() if p.requires_grad)
        return self.loss_fn(logits, labels), logits, labels

    def validation_step(self, batch, batch_idx):
        self._batch_idx = batch_idx
        return super().validation_step(batch, batch_idx)


def test_epoch_accuracy_pools_samples(tiny_model_dir, toy_glue_dir):
    """C12 (torchmetrics #597): batches of 4, 4, 2 with the last 2 wrong give val_acc 0.8, not the
    0.667 batch mean; state resets between runs; training doesn't leak into the val metric."""
    model = StubClassifier(tiny_model_dir)
    dm = SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir, val_fraction=0.05, eval_batch_size=4, val_split="random")
    assert trainer().validate(model, dm, verbose=False)[0]["val_acc"] == pytest.approx(0.8, abs=1e-7)
    assert trainer().validate(model, dm, verbose=False)[0]["val_acc"] == pytest.approx(0.8, abs=1e-7)
    t = trainer(max_epochs=1, num_sanity_val_steps=0)
    t.fit(model, dm)
    assert float(t.callback_metrics["val_acc"]) == pytest.approx(0.8, abs=1e-7)


def test_optimizer_holds_exactly_the_trainable_parameters(tiny_model_dir, toy_glue_dir):
    """C14 (adapters #260): after 5 steps every LoRA tensor and the head moved; every frozen tensor is
    bit-identical; the optimizer's parameters are exactly the requires_grad ones."""
    pl.seed_everything(0)
    model = LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8, learning_rate=1e-2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    t = trainer(max_steps=5, limit_val_batches=0)
    t.fit(model, SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir, batch_size=16))
    in_optimizer = {id(p) for group in t.optimizers[0].param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * 2 * 2 + 2
    for name, value in model.state_dict().items():
        if name in trainable:
            assert not torch.equal(value, start[name]), f"{name} did not train"
        else:
            assert torch.equal(value, start[name]), f"{name} changed but is frozen"


def test_bf16_base_trains_fp32_adapters(tiny_model_dir, toy_glue_dir):
    """C11 (diffusers #6442): a bfloat16 base with bf16-mixed on CPU; LoRA and head stay float32, train."""
    pl.seed_everything(0)
    model = LoRAClassifier(tiny_model_dir, torch_dtype="bfloat16", learning_rate=1e-2)
    assert model.model.bert.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    t = trainer(max_steps=3, limit_val_batches=0, precision="bf16-mixed")
    t.fit(model, SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir, batch_size=16))
    assert torch.isfinite(t.callback_metrics["train_loss"])
    assert all(not torch.equal(p, before[n]) for n, p in trainable.items() if n.endswith("lora_B"))
    with pytest.raises(ValueError, match=r"model.torch_dtype=bfloat16 needs trainer.precision=bf16-mixed"):
        trainer(max_steps=1).fit(LoRAClassifier(tiny_model_dir, torch_dtype="bfloat16"),
                                 SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir))
    with pytest.raises(ValueError, match=r"model.torch_dtype=float16 needs a GPU"):
        trainer(max_steps=1, precision="16-mixed").fit(LoRAClassifier(tiny_model_dir, torch_dtype="float16"),
                                                       SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir))


class DivergingClassifier(LoRAClassifier):
    """Its loss turns NaN from the 4th training step on."""

    def _shared_step(self, batch):
        loss, preds, labels = super()._shared_step(batch)
        if self.training and self.global_step >= 3:
            loss = loss * float("nan")
        return loss, preds, labels


def test_nan_loss_stops_the_run_keeping_checkpoints(tiny_model_dir, toy_glue_dir, tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    from lora_lightning.errors import TrainingDivergedError

    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    t = trainer(max_steps=10, limit_val_batches=0, enable_checkpointing=True, callbacks=[ckpt])
    with pytest.raises(TrainingDivergedError, match=r"train_loss is nan at step 3: training diverged"):
        t.fit(DivergingClassifier(tiny_model_dir), SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir, batch_size=16))
    saved = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert saved == ["epoch=0-step=2.ckpt"]
    LoRAClassifier.load_from_checkpoint(tmp_path / saved[0], map_location="cpu")  # the last good one loads


def test_full_finetune_trains_every_weight_and_keeps_its_checkpoint_apart(tiny_model_dir, toy_glue_dir, tmp_path):
    """``finetune="full"``: no LoRA layer, every weight trains and moves, and its checkpoint is
    refused by a LoRA model (by the option's name) but restores a full model exactly."""
    from transformers import AutoModelForSequenceClassification

    from lora_lightning.lora import LoRALinear

    pl.seed_everything(0)
    model = LoRAClassifier(tiny_model_dir, finetune="full", learning_rate=1e-3)
    plain = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    total = sum(p.numel() for p in plain.parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == total == sum(p.numel() for p in model.parameters())
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    before = model.model.bert.encoder.layer[0].intermediate.dense.weight.detach().clone()
    t = trainer(max_steps=3, limit_val_batches=0)
    t.fit(model, SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir, batch_size=16))
    assert not torch.equal(before, model.model.bert.encoder.layer[0].intermediate.dense.weight)
    path = tmp_path / "full.ckpt"
    t.save_checkpoint(path)
    assert len(torch.load(path, weights_only=True)["state_dict"]) == len(model.state_dict())
    with pytest.raises(ValueError, match=r"trained with finetune='full' but this model has finetune='lora'"):
        LoRAClassifier(tiny_model_dir).on_load_checkpoint(torch.load(path, weights_only=True))
    again = LoRAClassifier.load_from_checkpoint(path)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_unknown_finetune_mode_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match=r"^finetune must be 'lora' or 'full', got 'adapter'"):
        LoRAClassifier(tiny_model_dir, finetune="adapter")


@pytest.mark.parametrize("base, targets, head, said", [
    ("tiny_model_dir", ["query", "value"], ["classifier.weight", "classifier.bias"], "classifier"),
    ("tiny_distilbert_dir", ["q_lin", "v_lin"],
     ["pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias"], "pre_classifier, classifier"),
    ("tiny_roberta_dir", ["query", "value"], ["classifier.dense.weight", "classifier.dense.bias",
                                              "classifier.out_proj.weight", "classifier.out_proj.bias"], "classifier"),
], ids=["bert", "distilbert", "roberta"])
def test_every_new_tensor_trains(base, targets, head, said, request):
    """C15: every tensor the base folder does not hold (DistilBERT's pre_classifier too) trains in full, said
    in one line of ours instead of transformers' load report (which reads like a failure)."""
    from transformers.utils import logging as hf_logging

    from conftest import log_records

    verbosity = hf_logging.get_verbosity()
    with log_records("transformers") as hf_records, log_records("pytorch_lightning") as ours:
        model = LoRAClassifier(request.getfixturevalue(base), target_modules=targets)
    trainable = [n.removeprefix("model.") for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    assert trainable == head
    assert [r.getMessage() for r in ours] == [f"new head modules trained in full: {said}"]
    assert not [r.getMessage() for r in hf_records if r.levelno >= logging.WARNING]
    assert hf_logging.get_verbosity() == verbosity  # silenced around the load only


def test_forward_passes_only_the_inputs_the_model_takes(tiny_model_dir, tiny_distilbert_dir):
    """DistilBERT's forward takes no token_type_ids (BERT tokenizers yield them); no input is passed as None."""
    from conftest import sentence_batch

    def spy(module):
        calls, forward = [], module.model.forward

        def recording(**kwargs):
            calls.append(set(kwargs))
            return forward(**kwargs)

        module.model.forward = recording
        return calls

    distil = LoRAClassifier(tiny_distilbert_dir, target_modules=["q_lin", "v_lin"]).eval()
    distil_calls = spy(distil)
    distil(**sentence_batch(tiny_distilbert_dir))
    assert distil_calls == [{"input_ids", "attention_mask"}]
    bert = LoRAClassifier(tiny_model_dir).eval()
    bert_calls = spy(bert)
    batch = sentence_batch(tiny_model_dir)
    bert(batch["input_ids"], batch["attention_mask"])
    bert(**batch)
    assert bert_calls == [{"input_ids", "attention_mask"}, {"input_ids", "attention_mask", "token_type_ids"}]


def test_base_with_a_head_of_another_width_gets_a_new_2_label_head(tiny_nli_dir, toy_glue_dir):
    """C17: a base folder that is a 3-label classifier (an NLI model) gets a new 2-label head, said in one
    line, instead of transformers' size-mismatch RuntimeError; the encoder is the folder's, and it trains."""
    from transformers import BertForSequenceClassification

    from conftest import log_records

    pl.seed_everything(0)
    with log_records("pytorch_lightning") as records:
        model = LoRAClassifier(tiny_nli_dir, learning_rate=1e-2)
    assert [r.getMessage() for r in records] == [
        f"{tiny_nli_dir} holds a head of another width: the old head (classifier.weight (3, 32), classifier.bias (3,)) "
        "was replaced by a new 2-label one (classifier.weight (2, 32), classifier.bias (2,))",
        "new head modules trained in full: classifier",
    ]
    assert model.model.classifier.weight.shape == (2, 32) and model.model.config.id2label == {0: "negative", 1: "positive"}
    saved = BertForSequenceClassification.from_pretrained(tiny_nli_dir)
    assert torch.equal(model.model.bert.encoder.layer[0].attention.self.query.base_layer.weight,
                       saved.bert.encoder.layer[0].attention.self.query.weight)
    head = model.model.classifier.weight.detach().clone()
    t = trainer(max_steps=3, limit_val_batches=0)
    t.fit(model, SST2DataModule(tiny_nli_dir, data_dir=toy_glue_dir, batch_size=16))
    assert torch.isfinite(t.callback_metrics["train_loss"]) and not torch.equal(head, model.model.classifier.weight)


@pytest.mark.parametrize("base, kw, message", [
    ("tiny_model_dir", dict(target_modules=["query", "dense"], train_pooler=True),
     r"^model.target_modules=\['query', 'dense'\]: 'dense' matches 'bert.pooler.dense', inside 'bert.pooler', which "
     r"trains in full; .*: name the layers outside it, e.g. \['query', 'output.dense', 'intermediate.dense'\]$"),
    ("tiny_roberta_dir", dict(target_modules=["query", "value", "dense"]),
     r"^model.target_modules=\['query', 'value', 'dense'\]: 'dense' matches 'classifier.dense', inside 'classifier', "
     r"which trains in full; .* e.g. \['query', 'value', 'output.dense', 'intermediate.dense'\]$"),
    ("tiny_model_dir", dict(target_modules=["query", "classifier"]),
     r"^model.target_modules=\['query', 'classifier'\]: 'classifier' matches 'classifier', which trains in full; "
     r".* e.g. \['query'\]$"),
    ("tiny_distilbert_dir", dict(target_modules=["pre_classifier"]),
     r"'pre_classifier' matches 'pre_classifier', which trains in full; .*: drop 'pre_classifier'$"),
    ("tiny_distilbert_dir", dict(target_modules=["q_lin"], train_pooler=True),
     r"^train_pooler=true, but DistilBertForSequenceClassification has no pooler"),
    ("tiny_roberta_dir", dict(train_pooler=True), r"^train_pooler=true, but RobertaForSequenceClassification has no pooler"),
], ids=["lora-in-trained-pooler", "lora-in-roberta-head", "lora-on-the-head", "lora-only-on-a-new-layer",
        "distilbert-pooler", "roberta-pooler"])
def test_configurations_that_cannot_export_are_refused_when_built(base, kw, message, request):
    """Item 4 of issue 10: LoRA inside a module trained in full (PEFT skips such layers, so the adapter and the
    merged export would differ) and a pooler the head does not use are refused in one line, naming the option
    (what does build is exported in tests/test_export.py::test_every_configuration_round_trips_and_exports)."""
    from lora_lightning.errors import OptionError

    with pytest.raises(OptionError, match=message) as error:
        LoRAClassifier(request.getfixturevalue(base), **kw)
    assert "\n" not in str(error.value)


def test_loraplus_puts_lora_B_in_a_faster_group(tiny_model_dir):
    """LoRA+ (issue 11): two AdamW groups; lora_B at ratio x lr, lora_A and the head at lr; the schedule scales both."""
    module = LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8, learning_rate=1e-3, loraplus_lr_ratio=16.0, warmup_ratio=0.0)
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0)
    batch = {**sentence_batch(tiny_model_dir), "labels": torch.tensor([1, 0, 1, 0])}
    from torch.utils.data import DataLoader

    trainer.fit(module, train_dataloaders=DataLoader([batch] * 2, batch_size=None))
    slow, fast = trainer.optimizers[0].param_groups
    names = {id(p): n for n, p in module.named_parameters()}
    assert all(names[id(p)].endswith("lora_B") for p in fast["params"]) and len(fast["params"]) == 4
    assert {names[id(p)].rsplit(".", 1)[-1] for p in slow["params"]} == {"lora_A", "weight", "bias"}
    assert slow["initial_lr"] == pytest.approx(1e-3) and fast["initial_lr"] == pytest.approx(16e-3)  # the peaks


def test_backbone_dropout_reaches_every_dropout(tiny_model_dir, tiny_distilbert_dir):
    """backbone_dropout replaces the config's hidden, attention and classifier dropout; LoRA's own stays lora_dropout."""
    for folder, names in ((tiny_model_dir, ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")),
                          (tiny_distilbert_dir, ("dropout", "attention_dropout", "seq_classif_dropout"))):
        module = LoRAClassifier(folder, target_modules=["query", "value"] if folder == tiny_model_dir else ["q_lin", "v_lin"],
                                lora_dropout=0.2, backbone_dropout=0.0)
        assert all(getattr(module.model.config, n) == 0.0 for n in names)
        probs = {m.p for name, m in module.model.named_modules() if isinstance(m, torch.nn.Dropout) and "lora_dropout" not in name}
        assert probs == {0.0}
        assert {m.lora_dropout.p for m in module.model.modules() if hasattr(m, "lora_dropout")} == {0.2}
    assert LoRAClassifier(tiny_model_dir).model.config.hidden_dropout_prob == 0.1  # default: the config's


@pytest.mark.parametrize("options, message", [
    (dict(finetune="full", use_dora=True), "^use_dora need finetune=lora"),
    (dict(loraplus_lr_ratio=0.0), "^loraplus_lr_ratio must be > 0"),
    (dict(backbone_dropout=1.0), "^backbone_dropout must be in"),
])
def test_variant_options_refused(tiny_model_dir, options, message):
    with pytest.raises(ValueError, match=message):
        LoRAClassifier(tiny_model_dir, **options)


# K classes (issue 12): a toy set whose class is which of three token ids a row holds.
CLASS_TOKENS = (5, 11, 17)  # "good", "bad", "the" in the tiny vocab; the filler is the ids 18..25
NAMES = {0: "low", 1: "high", 2: "so so"}  # a space in a name: logged as it is (val_f1_so so)


def class_batches(n: int, size: int = 12, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``n`` dict batches of ``size`` rows of 8 token ids (``[CLS]``, 6 ids, ``[SEP]``), classes balanced:
    row i holds ``CLASS_TOKENS[label]`` at a random place among random filler ids."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        labels = torch.arange(size)[torch.randperm(size, generator=g)] % 3  # (B,)
        ids = torch.randint(18, 26, (size, 8), generator=g)  # (B, T)
        ids[:, 0], ids[:, -1] = 2, 3
        ids[torch.arange(size), torch.randint(1, 7, (size,), generator=g)] = torch.tensor(CLASS_TOKENS)[labels]
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                        "token_type_ids": torch.zeros_like(ids), "labels": labels})
    return batches


def images(log_dir) -> dict[str, list[int]]:
    """Image tag -> the steps it was written at, from a TensorBoard run folder's event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    events.Reload()
    return {tag: [e.step for e in events.Images(tag)] for tag in events.Tags()["images"]}


def test_three_class_model_has_a_3_wide_head_named(tiny_model_dir):
    """num_labels=3: head (3, 32), exact trainable count, the names in config.id2label/label2id; string keys
    (from YAML) are read as ints; the metrics are the multiclass ones."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score
    from torchmetrics.wrappers import ClasswiseWrapper

    model = LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8, num_labels=3, id2label={str(k): v for k, v in NAMES.items()})
    assert model.model.classifier.weight.shape == (3, 32) and model.model.classifier.bias.shape == (3,)
    # 2 layers x (query, value) x r=4 x (32 in + 32 out) + head 32 x 3 + 3
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * 2 * 4 * (32 + 32) + 99 == 1123
    assert model.model.config.id2label == NAMES and model.model.config.label2id == {"low": 0, "high": 1, "so so": 2}
    assert model.hparams.num_labels == 3 and model.hparams.id2label == NAMES  # saved with int keys
    assert model.label_names == ["low", "high", "so so"]
    assert {k: type(m) for k, m in model.val_metrics.items()} == {
        "val_acc": MulticlassAccuracy, "val_macro_f1": MulticlassF1Score, "val_f1": ClasswiseWrapper}
    assert isinstance(model.test_figure, MulticlassConfusionMatrix) and model.test_figure.num_classes == 3
    assert LoRAClassifier(tiny_model_dir, num_labels=4).model.config.id2label == {i: f"LABEL_{i}" for i in range(4)}
    with torch.no_grad():
        assert model(**sentence_batch(tiny_model_dir)).shape == (4, 3)


def test_three_class_training_logs_per_class_f1_and_confusion_figures(tiny_model_dir, tmp_path):
    """A 3-class toy set: val_acc far above 1/3; val_acc, val_macro_f1 and val_f1_<name> (the name as it is)
    are what torchmetrics' functions give on the model's own predictions after the last epoch (nothing
    carried over from earlier epochs), test_* the same on the same rows; one confusion-matrix figure per
    validation epoch (none for the sanity check) and one for test."""
    import os

    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

    pl.seed_everything(0)
    model = LoRAClassifier(tiny_model_dir, r=8, lora_alpha=16, lora_dropout=0.0, learning_rate=2e-2, warmup_ratio=0.0,
                           num_labels=3, id2label=NAMES)
    train, val = DataLoader(class_batches(12, seed=0), batch_size=None), DataLoader(class_batches(4, seed=1), batch_size=None)
    logger = TensorBoardLogger(tmp_path)
    best = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val_acc", mode="max")
    t = pl.Trainer(max_epochs=6, accelerator="cpu", logger=logger, callbacks=[best],
                   enable_progress_bar=False, enable_model_summary=False, deterministic=True)
    t.fit(model, train, val)
    logged = {k: float(v) for k, v in t.callback_metrics.items()}
    assert logged["val_acc"] >= 0.8, logged
    assert float(best.best_model_score) >= logged["val_acc"] and os.path.isfile(best.best_model_path)  # monitors val_acc
    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).argmax(-1) for b in val])
    labels = torch.cat([b["labels"] for b in val])
    per_class = multiclass_f1_score(preds, labels, 3, average=None)
    expected = {"val_acc": float((preds == labels).float().mean()),
                "val_macro_f1": float(multiclass_f1_score(preds, labels, 3, average="macro")),
                "val_f1_low": float(per_class[0]), "val_f1_high": float(per_class[1]), "val_f1_so so": float(per_class[2])}
    assert expected["val_acc"] == pytest.approx(float(multiclass_accuracy(preds, labels, 3, average="micro")))
    assert set(logged) == set(expected) | {"train_loss", "val_loss", "hp/val_acc"}
    assert {k: logged[k] for k in expected} == pytest.approx(expected, abs=1e-6)
    steps_per_epoch = len(train)
    tested = t.test(model, val, verbose=False)[0]
    assert set(tested) == {"test_loss", "test_acc", "test_macro_f1", "test_f1_low", "test_f1_high", "test_f1_so so"}
    assert {k.replace("test_", "val_"): v for k, v in tested.items() if k != "test_loss"} == pytest.approx(expected, abs=1e-6)
    assert images(logger.log_dir) == {"val_confusion_matrix": [steps_per_epoch * e - 1 for e in range(1, 7)],
                                      "test_confusion_matrix": [6 * steps_per_epoch]}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logger.log_dir)
    events.Reload()  # each figure on the same step as its validation's scalars
    assert [e.step for e in events.Scalars("val_acc")] == images(logger.log_dir)["val_confusion_matrix"]


def test_two_class_model_keeps_its_binary_metrics(tiny_model_dir, tmp_path):
    """The default 2 labels: BinaryAccuracy / BinaryF1Score as val_acc / val_f1 (no macro_f1, no per-class
    keys), val_f1 the F1 of class 1; the confusion figure is logged for 2 classes too."""
    from pytorch_lightning.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader
    from torchmetrics.classification import BinaryAccuracy, BinaryF1Score
    from torchmetrics.functional.classification import binary_f1_score

    model = LoRAClassifier(tiny_model_dir)
    assert {k: type(m) for k, m in model.val_metrics.items()} == {"val_acc": BinaryAccuracy, "val_f1": BinaryF1Score}
    batches = [{**b, "labels": b["labels"] % 2} for b in class_batches(2)]
    logger = TensorBoardLogger(tmp_path)
    got = quiet_trainer(logger=logger).validate(model, DataLoader(batches, batch_size=None), verbose=False)[0]
    assert set(got) == {"val_loss", "val_acc", "val_f1"}
    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).argmax(-1) for b in batches])
    assert got["val_f1"] == pytest.approx(float(binary_f1_score(preds, torch.cat([b["labels"] for b in batches]))), abs=1e-6)
    assert images(logger.log_dir) == {"val_confusion_matrix": [0]}


@pytest.mark.parametrize("kw, message", [
    (dict(num_labels=1), r"^num_labels must be an integer >= 2, got 1$"),
    (dict(num_labels=3, id2label={0: "a", 1: "b"}), r"^id2label must have exactly the keys 0..2 \(num_labels=3\), got keys \[0, 1\]$"),
    (dict(num_labels=2, id2label={1: "a", 2: "b"}), r"^id2label must have exactly the keys 0..1 "),
    (dict(num_labels=3, id2label={0: "a", 1: "b", 2: "a"}), r"^id2label names must differ, but \['a'\] name more than one class"),
    (dict(num_labels=2, id2label={0: "a", "x": "b"}), r"^id2label must have exactly the keys 0..1 .*got keys \[0, 'x'\]$"),
], ids=["one-label", "too-few-names", "keys-from-1", "repeated-name", "key-not-a-number"])
def test_bad_labels_are_refused_by_option(tiny_model_dir, kw, message):
    from lora_lightning.errors import OptionError

    with pytest.raises(OptionError, match=message) as error:
        LoRAClassifier(tiny_model_dir, **kw)
    assert "\n" not in str(error.value)


def test_base_head_of_the_same_width_is_kept(tiny_nli_dir):
    """C17 for K labels: a 3-label base with num_labels=3 keeps its head (trained on, in full); with 4 it gets a new one."""
    from transformers import BertForSequenceClassification

    from conftest import log_records

    with log_records("pytorch_lightning") as records:
        model = LoRAClassifier(tiny_nli_dir, num_labels=3, id2label=NAMES)
    assert [r.getMessage() for r in records] == [f"trained in full from {tiny_nli_dir}: classifier"]
    saved = BertForSequenceClassification.from_pretrained(tiny_nli_dir)
    assert torch.equal(model.model.classifier.weight, saved.classifier.weight)
    assert model.model.classifier.weight.requires_grad and model.model.config.id2label == NAMES
    with log_records("pytorch_lightning") as records:
        wider = LoRAClassifier(tiny_nli_dir, num_labels=4)
    assert records[0].getMessage().endswith("was replaced by a new 4-label one (classifier.weight (4, 32), classifier.bias (4,))")
    assert wider.model.classifier.weight.shape == (4, 32)


def test_compiled_step_equals_the_eager_step(tiny_model_dir):
    """Issue 21: the fast path (torch.compile, mode reduce-overhead: CUDA graphs on a GPU) gives the eager step's loss
    and every trainable gradient within float rounding, on batches of two shapes (dropout off: with it, the
    compiler draws other masks of the same distribution)."""
    import copy

    torch.manual_seed(0)
    eager = LoRAClassifier(tiny_model_dir, lora_dropout=0.0, backbone_dropout=0.0)
    torch.nn.init.normal_(eager.model.bert.encoder.layer[0].attention.self.query.lora_B)  # B != 0: the update counts
    fast = copy.deepcopy(eager)
    fast.model.forward = torch.compile(fast.model.forward, dynamic=True, mode="reduce-overhead")
    labels = torch.tensor([1, 0, 1, 0])
    for cut in (None, 4):  # two batch shapes (T = 6 and 4)
        batch = {k: v[:, :cut] for k, v in sentence_batch(tiny_model_dir).items()}
        losses = []
        for module in (eager, fast):
            module.zero_grad()
            loss = module.loss_fn(module(**batch), labels)
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
        grads = 0
        for (name, p), q in zip(eager.named_parameters(), fast.parameters()):
            if p.requires_grad:
                torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
                grads += 1
        assert grads == 2 * 2 * 2 + 2  # every lora_A / lora_B of query, value in 2 layers, and the head


def test_fit_says_what_trains_in_words(tiny_model_dir, toy_glue_dir):
    """Issue 21: the summary line counts Linears and the layers they are in (not '4 layers' for 4 Linears)."""
    from conftest import log_records

    with log_records("pytorch_lightning") as records:
        trainer(max_steps=1, limit_val_batches=0).fit(LoRAClassifier(tiny_model_dir),
                                                       SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir))
    said = [r.getMessage() for r in records if "trainable params" in r.getMessage()]
    assert said == ["LoRA r=4 on 4 Linears in 2 layers (query, value): trainable params: 1,090 || all params: 36,578 "
                    "|| trainable%: 2.9799"]
