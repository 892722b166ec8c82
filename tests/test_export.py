"""export.py: merged weights to plain transformers, the adapter to PEFT, and no silent overwrite."""

import json

import peft  # test dependency only: the oracle for the adapter format
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, pipeline

from conftest import sentence_batch
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
    out = tmp_path / "keep"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="keep exists: pass --overwrite true"):
        export(tiny_ckpt, str(out), format="merged")
    assert (out / "mine.txt").read_text() == "user data"
    export(tiny_ckpt, str(out), format="adapter", overwrite=True)
    assert (out / "adapter_config.json").is_file() and not (out / "mine.txt").exists()


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
