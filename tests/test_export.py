"""export.py: merged weights to plain transformers, the adapter to PEFT, and no silent overwrite."""

import inspect
import json
import os
import stat

import peft  # test dependency only: the oracle for the adapter format
import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, pipeline

from conftest import SENTENCES, quiet_trainer, sentence_batch
from lora_lightning.export import export, export_main
from lora_lightning.model import LoRAClassifier


def ours(tiny_ckpt, tiny_model_dir) -> torch.Tensor:
    module = LoRAClassifier.load_from_checkpoint(tiny_ckpt, map_location="cpu").eval()
    with torch.no_grad():
        return module(**sentence_batch(tiny_model_dir))


def test_merged_loads_in_plain_transformers(tiny_ckpt, tiny_model_dir, tmp_path):
    out = export_main(["--ckpt_path", tiny_ckpt, "--output_dir", str(tmp_path / "merged"), "--format", "merged"])
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.id2label == {0: "negative", 1: "positive"}
    keys = load_file(out / "model.safetensors").keys()
    assert not any("lora_" in k or "base_layer" in k for k in keys)
    with torch.no_grad():
        got = model(**sentence_batch(str(out))).logits
    torch.testing.assert_close(got, ours(tiny_ckpt, tiny_model_dir), atol=1e-5, rtol=0)
    result = pipeline("text-classification", model=str(out))(["the film is great"])
    assert result[0]["label"] in {"negative", "positive"}


def test_adapter_loads_in_peft(tiny_ckpt, tiny_model_dir, tmp_path):
    out = export(tiny_ckpt, str(tmp_path / "adapter"), format="adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["target_modules"] == ["query", "value"]
    tensors = load_file(out / "adapter_model.safetensors")
    assert "base_model.model.classifier.weight" in tensors and len(tensors) == 2 * 2 * 2 + 2
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    model = peft.PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        got = model(**sentence_batch(tiny_model_dir)).logits
    torch.testing.assert_close(got, ours(tiny_ckpt, tiny_model_dir), atol=1e-5, rtol=0)


def test_existing_output_is_never_overwritten(tiny_ckpt, tmp_path):
    """C38: no export deletes a file it did not write. A folder with the user's notes, a run folder holding the very
    checkpoint exported, another format's export are refused with --overwrite too, every file kept; an earlier export
    of the same format is replaced with --overwrite only."""
    import shutil

    out = tmp_path / "keep"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=r"keep holds files a merged export does not write \('mine.txt'\)"):
            export(tiny_ckpt, str(out), format="merged", overwrite=overwrite)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"] and (out / "mine.txt").read_text() == "user data"

    run = tmp_path / "run"  # the run folder of the checkpoint being exported
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_ckpt, run / "checkpoints" / "last.ckpt")
    (run / "config.yaml").write_text("seed_everything: 42\n")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match=r"holds files a merged export does not write \('checkpoints/', 'config.yaml'\)"):
        export(str(run / "checkpoints" / "last.ckpt"), str(run), format="merged", overwrite=True)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    exports = tmp_path / "exports"
    export(tiny_ckpt, str(exports), format="merged")
    with pytest.raises(FileExistsError, match="holds an earlier merged export: pass --overwrite true"):
        export(tiny_ckpt, str(exports), format="merged")
    with pytest.raises(FileExistsError, match="holds files an adapter export does not write"):
        export(tiny_ckpt, str(exports), format="adapter", overwrite=True)
    (exports / "config.json").write_text("{}")  # the earlier export, replaced whole
    export(tiny_ckpt, str(exports), format="merged", overwrite=True)
    assert len(json.loads((exports / "config.json").read_text())["id2label"]) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    (exports / "notes.md").write_text("mine")
    with pytest.raises(FileExistsError, match=r"\('notes.md'\)"):
        export(tiny_ckpt, str(exports), format="merged", overwrite=True)
    assert (exports / "notes.md").read_text() == "mine"


def test_full_finetune_exports_merged_not_adapter(tiny_model_dir, toy_glue_dir, tmp_path):
    """A ``finetune=full`` checkpoint exports as a plain folder with its logits; ``adapter`` is refused by name."""
    import pytorch_lightning as pl

    from conftest import quiet_trainer
    from lora_lightning.data import SST2DataModule

    pl.seed_everything(0)
    module = LoRAClassifier(tiny_model_dir, finetune="full", learning_rate=1e-3)
    trainer = quiet_trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(module, SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir, batch_size=16))
    ckpt = tmp_path / "full.ckpt"
    trainer.save_checkpoint(ckpt)
    with pytest.raises(ValueError, match=r"--format adapter: .* model.finetune=full, so it has no LoRA adapter"):
        export(str(ckpt), str(tmp_path / "adapter"), format="adapter")
    assert not (tmp_path / "adapter").exists()
    out = export(str(ckpt), str(tmp_path / "merged"))
    batch = sentence_batch(tiny_model_dir)
    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, module.eval()(**batch), atol=1e-5, rtol=0)


ENCODER_LINEARS = ["query", "key", "value", "output.dense", "intermediate.dense"]  # all Linears but pooler/head

# Item 4 of issue 10: every configuration that trains also exports in both formats with our logits (or is
# refused when built: tests/test_model.py::test_configurations_that_cannot_export_are_refused_when_built).
# (base folder fixture, options, the modules trained in full = the adapter's modules_to_save)
GRID = [
    pytest.param("tiny_model_dir", dict(target_modules=["query", "value"]), ["classifier"], id="bert-qv"),
    # a bare `dense` also adapts the frozen pooler.dense: LoRA there is fine, PEFT does the same
    pytest.param("tiny_model_dir", dict(target_modules=["query", "key", "value", "dense"]), ["classifier"],
                 id="bert-all-linears-lora-in-pooler"),
    pytest.param("tiny_model_dir", dict(target_modules=["query", "value"], train_pooler=True),
                 ["bert.pooler", "classifier"], id="bert-qv-pooler"),
    pytest.param("tiny_model_dir", dict(target_modules=ENCODER_LINEARS, train_pooler=True),
                 ["bert.pooler", "classifier"], id="bert-encoder-linears-pooler"),
    pytest.param("tiny_model_dir", dict(finetune="full"), None, id="bert-full"),
    pytest.param("tiny_distilbert_dir", dict(target_modules=["q_lin", "v_lin"]), ["pre_classifier", "classifier"],
                 id="distilbert-qv-C15"),
    pytest.param("tiny_distilbert_dir", dict(target_modules=["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"]),
                 ["pre_classifier", "classifier"], id="distilbert-all-encoder-linears"),
    pytest.param("tiny_distilbert_dir", dict(finetune="full"), None, id="distilbert-full"),
    pytest.param("tiny_roberta_dir", dict(target_modules=["query", "value"]), ["classifier"], id="roberta-qv"),
    pytest.param("tiny_roberta_dir", dict(target_modules=ENCODER_LINEARS), ["classifier"],
                 id="roberta-encoder-linears"),
    pytest.param("tiny_roberta_dir", dict(finetune="full"), None, id="roberta-full"),
    pytest.param("tiny_nli_dir", dict(target_modules=["query", "value"], train_pooler=True),
                 ["bert.pooler", "classifier"], id="bert-3-label-base-C17"),
    # the LoRA variants of issue 11: the adapter carries use_rslora / use_dora and DoRA's magnitudes
    pytest.param("tiny_model_dir", dict(target_modules=["query", "value"], use_rslora=True), ["classifier"],
                 id="bert-qv-rslora"),
    pytest.param("tiny_model_dir", dict(target_modules=["query", "value"], use_dora=True), ["classifier"],
                 id="bert-qv-dora"),
    pytest.param("tiny_model_dir", dict(target_modules=ENCODER_LINEARS, use_dora=True, use_rslora=True,
                                        loraplus_lr_ratio=16.0), ["classifier"], id="bert-encoder-dora-rslora-loraplus"),
    pytest.param("tiny_distilbert_dir", dict(target_modules=["q_lin", "v_lin"], use_dora=True),
                 ["pre_classifier", "classifier"], id="distilbert-qv-dora"),
]


def peft_key(name: str) -> str:
    """PEFT's saved name of one of our trained tensors (DoRA's magnitude has no ``.weight``)."""
    if name.endswith("lora_magnitude"):
        return f"base_model.model.{name}_vector"
    return f"base_model.model.{name}.weight" if "lora_" in name else f"base_model.model.{name}"


def fit_steps(module: LoRAClassifier, model_dir: str, steps: int = 3) -> pl.Trainer:
    """``steps`` optimizer steps on the 4 fixed sentences (labels 1, 0, 1, 0); returns the Trainer."""
    batch = {**sentence_batch(model_dir), "labels": torch.tensor([1, 0, 1, 0])}
    trainer = quiet_trainer(max_steps=steps, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=DataLoader([batch] * steps, batch_size=None))
    return trainer


@pytest.mark.parametrize("base, options, full_modules", GRID)
def test_every_configuration_round_trips_and_exports(base, options, full_modules, request, tmp_path):
    """Train 3 steps; the checkpoint reloads (after another seed) to identical logits; the merged folder
    in transformers and the adapter in PEFT give our logits, and carry every tensor trained in full."""
    model_dir = request.getfixturevalue(base)
    pl.seed_everything(0)
    lr = 1e-3 if options.get("finetune") == "full" else 1e-2
    module = LoRAClassifier(model_dir, r=4, lora_alpha=8, learning_rate=lr, **options)
    start = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    trainer = fit_steps(module, model_dir)
    trained = {n.removeprefix("model."): p.detach() for n, p in module.named_parameters() if p.requires_grad}
    if full_modules is not None:
        assert all(not torch.equal(p, start["model." + n]) for n, p in trained.items()), "a trained tensor did not move"
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    batch = sentence_batch(model_dir)
    with torch.no_grad():
        expected = module.eval()(**batch)
        torch.manual_seed(123)  # new tensors are drawn again on load: the checkpoint must hold them all
        reloaded = LoRAClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()(**batch)
        assert torch.equal(reloaded, expected), (reloaded, expected)

        merged = export(str(ckpt), str(tmp_path / "merged"), format="merged")
        plain = AutoModelForSequenceClassification.from_pretrained(merged).eval()
        takes = inspect.signature(plain.forward).parameters  # DistilBERT takes no token_type_ids
        inputs = {k: v for k, v in batch.items() if k in takes}
        torch.testing.assert_close(plain(**inputs).logits, expected, atol=1e-5, rtol=0)
        if full_modules is None:  # finetune=full: no adapter to export
            with pytest.raises(ValueError, match="--format adapter: .* model.finetune=full"):
                export(str(ckpt), str(tmp_path / "adapter"), format="adapter")
            return
        saved = load_file(merged / "model.safetensors")
        for name, p in trained.items():
            if "lora_" not in name:
                assert torch.equal(saved[name], p), name

        adapter = export(str(ckpt), str(tmp_path / "adapter"), format="adapter")
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert config["modules_to_save"] == full_modules
        assert (config["use_rslora"], config["use_dora"]) == (options.get("use_rslora", False), options.get("use_dora", False))
        tensors = load_file(adapter / "adapter_model.safetensors")
        assert set(tensors) == {peft_key(n) for n in trained}
        base_model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2,
                                                                        ignore_mismatched_sizes=True)
        peft_model = peft.PeftModel.from_pretrained(base_model, adapter).eval()
        torch.testing.assert_close(peft_model(**inputs).logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)],
                         ids=["umask-022", "umask-002"])
def test_exported_files_are_readable_by_others(tiny_ckpt, tmp_path, umask, file_mode, dir_mode):
    """safetensors writes 0600 files; the export is a normal folder: 0o666 / 0o777 less the umask."""
    old = os.umask(umask)
    try:
        folders = [export(tiny_ckpt, str(tmp_path / fmt), format=fmt) for fmt in ("merged", "adapter")]
    finally:
        os.umask(old)
    for folder in folders:
        assert stat.S_IMODE(folder.stat().st_mode) == dir_mode
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in folder.rglob("*")}
        assert any(name.endswith(".safetensors") for name in modes)
        assert modes == dict.fromkeys(modes, file_mode)


def test_export_option_errors_are_one_line(capsys):
    """`export` with a mistyped or missing option: one line with a "did you mean", exit status 2."""
    from lora_lightning.cli import main

    assert main(["export", "--ckpt_pth", "x.ckpt", "--output_dir", "out"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unrecognized arguments: --ckpt_pth x.ckpt; did you mean --ckpt_path?") and err.count("\n") == 1
    # a newcomer passing the run's config, as to test and predict: one line saying export needs only the checkpoint
    assert main(["export", "--config", "run/config.yaml", "--ckpt_path", "x.ckpt", "--output_dir", "out"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: export takes no --config: the checkpoint holds the model") and err.count("\n") == 1


def test_three_label_model_exports_its_labels(tiny_model_dir, tmp_path, capsys):
    """Issue 12: a 3-label checkpoint's merged folder names the 3 classes (config.json; pipeline answers with
    them, our top class for each sentence); its adapter loads into PEFT on a 3-label base (the call export
    prints) with our logits."""
    from test_model import NAMES, class_batches

    pl.seed_everything(0)
    module = LoRAClassifier(tiny_model_dir, r=4, lora_alpha=8, learning_rate=1e-2, num_labels=3, id2label=NAMES)
    trainer = quiet_trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=DataLoader(class_batches(3), batch_size=None))
    ckpt = tmp_path / "three.ckpt"
    trainer.save_checkpoint(ckpt)
    batch = sentence_batch(tiny_model_dir)
    with torch.no_grad():
        expected = module.eval()(**batch)  # (4, 3)
    assert expected.shape == (4, 3)

    merged = export(str(ckpt), str(tmp_path / "merged"), format="merged")
    config = json.loads((merged / "config.json").read_text())
    assert config["id2label"] == {"0": "low", "1": "high", "2": "so so"} and config["label2id"] == {"low": 0, "high": 1, "so so": 2}
    plain = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, expected, atol=1e-5, rtol=0)
    classify = pipeline("text-classification", model=str(merged))
    assert [r["label"] for r in classify(SENTENCES)] == [NAMES[int(i)] for i in expected.argmax(-1)]
    assert sorted(r["label"] for r in classify(SENTENCES[:1], top_k=None)[0]) == sorted(NAMES.values())

    capsys.readouterr()
    adapter = export(str(ckpt), str(tmp_path / "adapter"), format="adapter")
    assert load_file(adapter / "adapter_model.safetensors")["base_model.model.classifier.weight"].shape == (3, 32)
    said = capsys.readouterr().out.splitlines()
    assert said[0] == f"Wrote the adapter export of {ckpt} to {adapter}/"
    call = said[1].removeprefix("Load it with peft.PeftModel.from_pretrained(").removesuffix(f", {str(adapter)!r})")
    assert call == (f"AutoModelForSequenceClassification.from_pretrained({tiny_model_dir!r}, num_labels=3, "
                    f"id2label={NAMES!r})")
    base = eval(call, {"AutoModelForSequenceClassification": AutoModelForSequenceClassification})  # the printed call, run
    peft_model = peft.PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**batch).logits, expected, atol=1e-5, rtol=0)
    assert peft_model.config.id2label == NAMES


def test_merged_export_cuts_long_texts_where_the_run_did(tiny_ckpt, tiny_model_dir, tmp_path, capsys):
    """A newcomer's first hour: the merged folder's tokenizer holds the run's max_length (128 here, not the base's
    512), so pipeline(..., truncation=True), as export prints it, classifies a text of thousands of tokens as the
    model does its first 128; the printed line runs as it is."""
    out = export(tiny_ckpt, str(tmp_path / "merged"))
    said = capsys.readouterr().out.splitlines()
    assert said[1] == f'Load it with pipeline("text-classification", model={str(out)!r}, truncation=True)  # cuts at 128 tokens, as the run did'
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 128
    long = " ".join(["the film is very good and the plot is dull"] * 500)  # 5,000 words: past the 512 positions
    classify = eval(said[1].removeprefix("Load it with "), {"pipeline": pipeline})
    (result,) = classify([long], top_k=None)
    module = LoRAClassifier.load_from_checkpoint(tiny_ckpt)
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(tiny_model_dir)([long], truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        expected = module(**batch).softmax(-1)[0]
    got = {r["label"]: r["score"] for r in result}
    assert got == pytest.approx({"negative": float(expected[0]), "positive": float(expected[1])}, abs=1e-5)


def test_adapter_load_line_works_offline_for_the_packaged_model(packaged_model, toy_glue_dir, tmp_path, capsys):
    """A newcomer's first hour: the adapter export's printed call names the folder the run loaded its base from (the
    packaged model's), not a Hub id that fails offline; the call runs."""
    from lora_lightning.data import SST2DataModule

    module = LoRAClassifier(packaged_model)
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(module, SST2DataModule(packaged_model, data_dir=toy_glue_dir, batch_size=8, max_train_samples=8))
    trainer.save_checkpoint(tmp_path / "mini.ckpt")
    capsys.readouterr()
    adapter = export(str(tmp_path / "mini.ckpt"), str(tmp_path / "adapter"), format="adapter")
    call = capsys.readouterr().out.splitlines()[1].removeprefix("Load it with peft.PeftModel.from_pretrained(")
    base_call = call.removesuffix(f", {str(adapter)!r})")
    folder = eval(base_call.split("from_pretrained(", 1)[1].split(",", 1)[0])
    assert os.path.isdir(folder) and packaged_model not in base_call
    base = eval(base_call, {"AutoModelForSequenceClassification": AutoModelForSequenceClassification})
    assert base.config.num_labels == 2
