"""multi_lora.py, adapters.py and engine.py: many adapters on one base, each row exactly its own adapter's answer."""

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from conftest import SENTENCES
from lora_lightning.engine import Engine, Row
from lora_lightning import multi_lora
from lora_lightning.errors import CheckpointError
from lora_lightning.lora import LoRALinear
from lora_lightning.export import export
from lora_lightning.model import LoRAClassifier

VARIANTS = {
    "plain": dict(r=4, lora_alpha=8),
    "rslora": dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["query", "key", "value"]),
    "dora": dict(r=2, lora_alpha=4, use_dora=True, target_modules=["value", "output.dense"]),
    "wide": dict(r=16, lora_alpha=16, target_modules=["query", "value", "intermediate.dense"]),
}


def trained(tmp_path: Path, model_dir: str, glue_dir: str, name: str, num_labels: int = 2, **options) -> str:
    """A checkpoint of the tiny model with LoRA as ``options`` say, every trained tensor random (so each adapter's
    update and head differ from zero and from the others'), written as ``fit`` writes one."""
    torch.manual_seed(sum(map(ord, name)))
    id2label = ({0: "negative", 1: "positive"} if num_labels == 2 else {0: "score"} if num_labels == 1 else
                {i: f"c{i}" for i in range(num_labels)})
    model = LoRAClassifier(model_dir, lora_dropout=0.0, num_labels=num_labels, id2label=id2label, **options)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=0.5)
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "global_step": 0,
            "datamodule_hyper_parameters": {"max_length": 64}, "pytorch-lightning_version": pl.__version__}
    model.on_save_checkpoint(ckpt)
    path = tmp_path / f"{name}.ckpt"
    torch.save(ckpt, path)
    return str(path)


def alone(ckpt: str, texts: list[str]) -> torch.Tensor:
    """The checkpoint's own probabilities for ``texts``: LoRAClassifier, unmerged, eval mode."""
    from transformers import AutoTokenizer

    model = LoRAClassifier.load_from_checkpoint(ckpt)
    batch = AutoTokenizer.from_pretrained(model.hparams.model_name_or_path)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).softmax(-1)


@pytest.mark.parametrize("route", ["deltas", "merged"])
def test_every_row_gets_its_own_adapters_answer(tmp_path, tiny_model_dir, toy_glue_dir, monkeypatch, route):
    """Four adapters (plain, rsLoRA, DoRA, another r and other targets; one with 3 classes) in one mixed batch: each
    row's probabilities equal its adapter's checkpoint alone within 1e-5, on both of ``MultiLoRALinear``'s paths
    (``deltas``: the base's matmul once for the whole batch, its Linears called once per forward, plus each group's
    thin matmuls; ``merged``: each group with its adapter's weight merged for the forward, the base's Linear called
    for the rows of an adapter that does not adapt it); adding or removing an adapter leaves the base's weights and the other answers as they were."""
    monkeypatch.setattr(multi_lora, "MERGE_MIN_TOKENS_PER_RANK", 10**9 if route == "deltas" else 0)
    ckpts = {n: trained(tmp_path, tiny_model_dir, toy_glue_dir, n, **o) for n, o in VARIANTS.items()}
    ckpts["three"] = trained(tmp_path, tiny_model_dir, toy_glue_dir, "three", num_labels=3, r=4, lora_alpha=8)
    engine = Engine(tiny_model_dir)
    base = {k: v.clone() for k, v in engine.model.model.state_dict().items()}
    for name, path in ckpts.items():
        engine.add(name, path)
    names = list(ckpts)
    rows = [Row(names[i % len(names)], SENTENCES[i % len(SENTENCES)]) for i in range(13)]
    calls = []
    query = engine.model.model.bert.encoder.layer[0].attention.self.query
    query.base_layer.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    outputs, _ = engine.outputs(rows)
    dora_rows = sum(r.adapter == "dora" for r in rows)  # DoRA's adapter does not adapt query: the base layer alone
    assert calls == ([len(rows)] if route == "deltas" else [dora_rows])  # once for the whole batch, or its rows only
    for name in names:
        mine = [i for i, r in enumerate(rows) if r.adapter == name]
        expected = alone(ckpts[name], [rows[i].text for i in mine])
        got = torch.stack([outputs[i] for i in mine])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=name)
    engine.remove("dora")
    again, _ = engine.outputs([r for r in rows if r.adapter != "dora"])
    kept = [o for r, o in zip(rows, outputs) if r.adapter != "dora"]
    for a, b in zip(again, kept):  # the same rows in another batch: equal to float rounding
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    engine.add("dora-again", ckpts["dora"])
    assert all(torch.equal(v, base[k]) for k, v in engine.model.model.state_dict().items() if k in base)
    answers = engine.predict([Row("three", "the film is great", all_scores=True), Row("plain", "a dull movie")])
    assert [s["label"] for s in answers[0]["scores"]] == ["c0", "c1", "c2"] and answers[1]["label"] in ("negative", "positive")
    assert answers[0]["score"] == max(s["score"] for s in answers[0]["scores"]) and answers[1]["truncated"] is False


@pytest.mark.parametrize("order", ["sorted", "unsorted"])
def test_multi_lora_linear_mixes_merged_and_unmerged_groups(monkeypatch, order):
    """``MultiLoRALinear`` alone: three adapters (plain, DoRA, one that does not adapt this layer), rows grouped by
    adapter (slices) or interleaved (index tensors); a threshold that merges the big group only. Each row equals
    ``LoRALinear`` of its adapter within 1e-5 (the base layer alone for the third)."""
    torch.manual_seed(0)
    base = torch.nn.Linear(12, 10)
    router = multi_lora.Router()
    layer = multi_lora.MultiLoRALinear(base, router)
    singles = {}
    for slot, (r, dora) in enumerate([(4, False), (2, True)]):
        single = LoRALinear(base, r=r, lora_alpha=2 * r, lora_dropout=0.0, use_dora=dora).eval()
        with torch.no_grad():
            single.lora_B.normal_()
            if dora:
                single.lora_magnitude.mul_(torch.rand(10) + 0.5)
        layer.add(slot, multi_lora.LayerUpdate(single.lora_A.detach(), single.lora_B.detach(), single.scaling,
                                               single.lora_magnitude.detach() if dora else None))
        singles[slot] = single
    slots = torch.tensor([0] * 6 + [1] * 2 + [2] * 3)  # (11,): adapter 0's group is the big one
    if order == "unsorted":
        slots = slots[torch.randperm(len(slots))]
    x = torch.randn(len(slots), 5, 12)  # (B, T, in)
    monkeypatch.setattr(multi_lora, "MERGE_MIN_TOKENS_PER_RANK", 6 * 5 // 4)  # 30 tokens of r=4 merge, 10 of r=2 do not
    router.set(slots)
    with torch.no_grad():
        got = layer(x)
        for i, slot in enumerate(slots.tolist()):
            expected = singles[slot](x[i:i + 1]) if slot in singles else base(x[i:i + 1])
            torch.testing.assert_close(got[i:i + 1], expected, atol=1e-5, rtol=0, msg=f"row {i}, adapter {slot}")


def test_adapters_of_another_base_or_shape_are_refused(tmp_path, tiny_model_dir, tiny_roberta_dir, toy_glue_dir):
    """An adapter trained on other weights under any name, on another model, or a full fine-tuning checkpoint:
    refused at load, naming the file and what differs; nothing of it stays loaded."""
    plain = trained(tmp_path, tiny_model_dir, toy_glue_dir, "plain", **VARIANTS["plain"])
    other = tmp_path / "other-bert"
    other.mkdir()
    for f in Path(tiny_model_dir).iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    from transformers import BertModel

    from conftest import tiny_config

    torch.manual_seed(1)
    BertModel(tiny_config()).save_pretrained(other)  # the same name of folder layout, other weights
    engine = Engine(str(other))
    with pytest.raises(CheckpointError, match=r"adapter a: .*plain.ckpt: it was trained on .* \(weights [0-9a-f]{16}\), this "
                                              r"server's base is .* \(weights [0-9a-f]{16}\)"):
        engine.add("a", plain)
    assert engine.adapters == {} and engine.model.slots == {}
    full = LoRAClassifier(tiny_model_dir, finetune="full")
    ckpt = {"state_dict": full.state_dict(), "hyper_parameters": dict(full.hparams), "pytorch-lightning_version": pl.__version__}
    torch.save(ckpt, tmp_path / "full.ckpt")
    with pytest.raises(CheckpointError, match=r"full.ckpt is a full fine-tuning checkpoint: it has no adapter"):
        Engine(tiny_model_dir).add("f", str(tmp_path / "full.ckpt"))
    state = torch.load(plain, weights_only=True)
    state.pop("base_fingerprint")  # an older checkpoint: the model name decides
    key = next(k for k in state["state_dict"] if k.endswith("lora_A"))
    state["state_dict"][key] = torch.zeros(4, 7)
    torch.save(state, tmp_path / "bent.ckpt")
    with pytest.raises(CheckpointError, match=r"bent.ckpt does not fit the base .*: lora_A \(4, 7\) / lora_B \(32, 4\) do not fit"):
        Engine(tiny_model_dir).add("b", str(tmp_path / "bent.ckpt"))
    with pytest.raises(CheckpointError, match=r"it was trained on .*tiny-bert.*, this server's base is .*tiny-roberta"):
        Engine(tiny_roberta_dir).add("b", str(tmp_path / "bent.ckpt"))


def test_peft_export_folders_serve_like_their_checkpoint(tmp_path, tiny_model_dir, toy_glue_dir):
    """`export --format adapter` writes lora_lightning.json beside PEFT's files; served, the folder answers as its
    checkpoint does (labels, probabilities), DoRA included."""
    ckpt = trained(tmp_path, tiny_model_dir, toy_glue_dir, "dora", **VARIANTS["dora"])
    folder = export(ckpt, str(tmp_path / "adapter"), format="adapter")
    meta = json.loads((folder / "lora_lightning.json").read_text())
    assert meta["id2label"] == {"0": "negative", "1": "positive"} and meta["problem_type"] == "single_label_classification"
    engine = Engine(tiny_model_dir)
    engine.add("ckpt", ckpt)
    engine.add("folder", str(folder))
    rows = [Row(a, t) for t in SENTENCES for a in ("ckpt", "folder")]
    outputs, _ = engine.outputs(rows)
    for a, b in zip(outputs[::2], outputs[1::2]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert engine.adapters["folder"].public()["labels"] == ["negative", "positive"]
