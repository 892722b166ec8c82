"""hub.py and the model folder: what a local folder must hold (config, weights, tokenizer), named in one line."""

import shutil
from pathlib import Path

import pytest

from lora_lightning.cli import main
from lora_lightning.errors import ModelFileError
from lora_lightning.hub import load_tokenizer, resolve_model_path

ROOT = Path(__file__).resolve().parents[1]


def model_copy(src: str, dst: Path, skip=()) -> Path:
    dst.mkdir()
    for f in Path(src).iterdir():
        if f.name not in skip:
            shutil.copy(f, dst / f.name)
    return dst


def fit(model: Path, toy_glue_dir: str, tmp_path: Path) -> list[str]:
    return ["fit", "--config", str(ROOT / "configs/sst2.yaml"), "--model.model_name_or_path", str(model),
            "--data.data_dir", toy_glue_dir, "--trainer.max_steps", "1", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]


def test_a_folder_without_tokenizer_files_is_refused(tmp_path, tiny_model_dir, toy_glue_dir, capsys):
    """C31: config.json and weights only (model.save_pretrained alone): transformers would build a tokenizer of the
    special tokens and every word would be [UNK]; refused in one line naming the folder, before any step."""
    bare = model_copy(tiny_model_dir, tmp_path / "bare", skip=("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                                                                "special_tokens_map.json"))
    with pytest.raises(ModelFileError, match=r"bare holds no tokenizer files \(looked for tokenizer.json or vocab.txt"):
        load_tokenizer(str(bare))
    assert main(fit(bare, toy_glue_dir, tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"error: model.model_name_or_path='{bare}': {bare} holds no tokenizer files" in err and "Traceback" not in err
    assert not list((tmp_path / "logs").rglob("*.ckpt"))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_weights_file_is_named(damage, tmp_path, tiny_model_dir, toy_glue_dir, tiny_ckpt, capsys):
    """C32: the base model's model.safetensors cut short or overwritten: fit and export of an earlier checkpoint end
    with exit 2 and one line naming the file (not a SafetensorError traceback)."""
    broken = model_copy(tiny_model_dir, tmp_path / "broken")
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00" * 64)
    assert main(fit(broken, toy_glue_dir, tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"the weights file {weights} (" in err and ") is incomplete or corrupt" in err and "Traceback" not in err
    import torch

    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["hyper_parameters"]["model_name_or_path"] = str(broken)
    torch.save(ckpt, tmp_path / "old.ckpt")
    assert main(["export", "--ckpt_path", str(tmp_path / "old.ckpt"), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"the weights file {weights} (" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_folders_without_config_or_weights_are_named(tmp_path, tiny_model_dir):
    from lora_lightning.backbone import load_backbone

    no_weights = model_copy(tiny_model_dir, tmp_path / "no-weights", skip=("model.safetensors",))
    with pytest.raises(ModelFileError, match=r"no-weights holds no weights \(looked for model.safetensors"):
        load_backbone(str(no_weights))
    bad_config = model_copy(tiny_model_dir, tmp_path / "bad-config")
    (bad_config / "config.json").write_text('{"model_type": "be')
    with pytest.raises(ModelFileError, match=r"config.json is incomplete or corrupt \(not JSON"):
        load_backbone(str(bad_config))


def test_home_folder_in_the_model_path_is_expanded(tmp_path, tiny_model_dir, monkeypatch):
    """`~` in model.model_name_or_path is the home folder, as in the data file options."""
    model_copy(tiny_model_dir, tmp_path / "models")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_model_path("~/models") == str(tmp_path / "models")
    assert len(load_tokenizer("~/models")) == 26
