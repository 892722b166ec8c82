"""The LoRA math (lora.py): init, forward, merge, injection, freezing, errors, and peft as the oracle."""

import copy

import peft  # test dependency only: the oracle
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from conftest import tiny_config
from lora_lightning.dropout import use_fast_dropout
from lora_lightning.lora import (
    LoRALinear,
    count_parameters,
    inject_lora,
    mark_only_lora_as_trainable,
    merge_lora,
    unmerge_lora,
)


def randomized(layer: LoRALinear, seed: int = 0) -> LoRALinear:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g))
    return layer


def tiny_classifier(seed: int = 0, **overrides) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_config(num_labels=2, **overrides)).eval()


def batch(seed: int = 0, vocab: int = 26):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, vocab, (4, 9), generator=g), "attention_mask": torch.ones(4, 9, dtype=torch.long)}


def test_init_shapes_and_zero_B():
    layer = LoRALinear(nn.Linear(16, 8), r=2, lora_alpha=4)
    assert layer.lora_A.shape == (2, 16) and layer.lora_B.shape == (8, 2)
    assert torch.count_nonzero(layer.lora_B) == 0  # B starts at zero (the paper's init)
    assert torch.count_nonzero(layer.lora_A) == 2 * 16
    bound = 1 / 16**0.5  # kaiming_uniform_(a=sqrt(5)) on fan_in=16
    assert layer.lora_A.abs().max() <= bound
    assert layer.scaling == 2.0
    assert isinstance(LoRALinear(nn.Linear(4, 4), lora_dropout=0.0).lora_dropout, nn.Identity)
    assert not layer.base_layer.weight.requires_grad and not layer.base_layer.bias.requires_grad
    assert "r=2" in repr(layer) and "lora_alpha=4" in repr(layer) and "merged=False" in repr(layer)


def test_identity_at_init_and_forward_formula():
    base = nn.Linear(16, 8)
    x = torch.randn(3, 5, 16)
    expected = base(x)
    layer = LoRALinear(base, r=4, lora_alpha=8)
    assert torch.equal(layer(x), expected)
    randomized(layer)
    manual = x @ base.weight.T + base.bias + (x @ layer.lora_A.T @ layer.lora_B.T) * 2.0
    torch.testing.assert_close(layer(x), manual, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(layer(x), expected, atol=1e-3)


def test_merge_unmerge_exact_and_idempotent():
    layer = randomized(LoRALinear(nn.Linear(16, 8), r=2, lora_alpha=4, lora_dropout=0.0)).eval()
    w0 = layer.base_layer.weight.detach().clone()
    x = torch.randn(5, 16)
    y = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer.base_layer.weight, w0 + 2.0 * layer.lora_B @ layer.lora_A)
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer(x), layer.base_layer(x))  # merged: the plain Linear
    merged_w = layer.base_layer.weight.detach().clone()
    layer.merge()  # no double add
    assert torch.equal(layer.base_layer.weight, merged_w)
    layer.unmerge()
    layer.unmerge()
    assert not layer.merged
    assert torch.equal(layer.base_layer.weight, w0)  # restored bit for bit
    torch.testing.assert_close(layer(x), y, atol=1e-6, rtol=0)


def test_merge_cycles_do_not_drift_and_round_once():
    """Many merge/unmerge cycles leave the base weight bit-identical; a bf16 merge rounds W + d once."""
    layer = randomized(LoRALinear(nn.Linear(64, 64), r=4, lora_alpha=8, lora_dropout=0.0))
    w0 = layer.base_layer.weight.detach().clone()
    for _ in range(50):
        layer.merge()
        layer.unmerge()
    assert torch.equal(layer.base_layer.weight, w0)
    half = randomized(LoRALinear(nn.Linear(64, 64).to(torch.bfloat16), r=4, lora_alpha=8))
    assert half.lora_A.dtype == half.lora_B.dtype == torch.float32  # trained tensors stay fp32
    w = half.base_layer.weight.detach().clone()
    half.merge()
    expected = (w.float() + half.delta_weight()).to(torch.bfloat16)
    assert torch.equal(half.base_layer.weight, expected)
    half.unmerge()
    assert torch.equal(half.base_layer.weight, w)
    out = half(torch.randn(3, 64, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


def test_injection_follows_the_model_mode():
    """C13: injecting into an eval-mode model leaves LoRA dropout off (a new module starts in train mode)."""
    model = tiny_classifier().eval()
    inject_lora(model, lora_dropout=0.5)
    assert not any(m.training for m in model.modules())
    for m in model.modules():
        if isinstance(m, LoRALinear):
            randomized(m)
    x = batch()
    with torch.no_grad():
        assert torch.equal(model(**x).logits, model(**x).logits)  # deterministic: dropout off


def test_mode_switch_never_merges():
    """C02 (microsoft/LoRA #34): merging is explicit; train()/eval() cycles change nothing."""
    layer = randomized(LoRALinear(nn.Linear(16, 8), r=2, lora_alpha=4, lora_dropout=0.0))
    seq = nn.Sequential(layer)
    w0 = layer.base_layer.weight.detach().clone()
    x = torch.randn(5, 16)
    y_train = seq.train()(x)
    for _ in range(5):
        seq.train()
        seq.eval()
    assert not layer.merged and torch.equal(layer.base_layer.weight, w0)
    torch.testing.assert_close(seq(x), y_train)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"r": 0}, "r must be an integer >= 1"),
        ({"lora_alpha": 0}, "lora_alpha must be > 0"),
        ({"lora_alpha": -1}, "lora_alpha must be > 0"),
        ({"lora_dropout": 1.0}, "lora_dropout must be in [0, 1)"),
        ({"lora_dropout": -0.1}, "lora_dropout must be in [0, 1)"),
    ],
)
def test_bad_lora_options(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        LoRALinear(nn.Linear(4, 4), **kwargs)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        inject_lora(tiny_classifier(), **kwargs)


def test_inject_errors_name_what_exists():
    model = tiny_classifier()
    with pytest.raises(ValueError, match=r"\['nonexistent'\] matched no nn.Linear.*'query'"):
        inject_lora(model, ["nonexistent"])
    inject_lora(model)
    with pytest.raises(ValueError, match="called twice"):
        inject_lora(model)
    with pytest.raises(ValueError, match="no LoRA layers"):
        mark_only_lora_as_trainable(tiny_classifier())
    with pytest.raises(ValueError, match=r"modules_to_save \['head'\]"):
        mark_only_lora_as_trainable(model, ["head"])


def test_target_matching_is_by_suffix():
    names = inject_lora(tiny_classifier(), ["query", "value"])
    assert names == [f"bert.encoder.layer.{i}.attention.self.{t}" for i in range(2) for t in ("query", "value")]
    # a bare "dense" also matches the pooler; a longer suffix does not
    assert "bert.pooler.dense" in inject_lora(tiny_classifier(), ["dense"])
    assert inject_lora(tiny_classifier(), ["attention.output.dense"]) == [
        f"bert.encoder.layer.{i}.attention.output.dense" for i in range(2)
    ]


def test_exact_counts_bert_base_shape():
    """bert-base-uncased shape, built without download: r=4 on query+value = 147,456 LoRA parameters."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(num_labels=2))  # 12 layers, 768 wide
    total_before = sum(p.numel() for p in model.parameters())
    inject_lora(model, ["query", "value"], r=4, lora_alpha=16)
    trainable = mark_only_lora_as_trainable(model, ["classifier"])
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert lora == 147_456 == 12 * 2 * 4 * (768 + 768)
    assert count_parameters(model) == (147_456 + 768 * 2 + 2, total_before + 147_456)
    assert len(trainable) == 12 * 2 * 2 + 2


def test_gradients_reach_only_lora_and_head():
    model = tiny_classifier().train()
    inject_lora(model, r=4, lora_alpha=8, lora_dropout=0.0)
    mark_only_lora_as_trainable(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(**batch(), labels=torch.tensor([0, 1, 0, 1]))
    out.loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in model.named_parameters() if "lora_" in n or n.startswith("classifier.")}
    # lora_B is zero at init, so lora_A gets no gradient on step one; B and the head do
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("lora_B"))
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_merge_lora_whole_model_logits_agree():
    model = tiny_classifier()
    inject_lora(model, r=4, lora_alpha=8, lora_dropout=0.0)
    for i, m in enumerate(m for m in model.modules() if isinstance(m, LoRALinear)):
        randomized(m, seed=i)
    with torch.no_grad():
        before = model(**batch()).logits
        merge_lora(model)
        merge_lora(model)
        merged = model(**batch()).logits
        unmerge_lora(model)
        after = model(**batch()).logits
    torch.testing.assert_close(merged, before, atol=1e-5, rtol=0)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    assert not torch.allclose(before, tiny_classifier()(**batch()).logits, atol=1e-3)


def test_matches_peft_on_same_weights():
    """peft is the oracle: same base, same A and B, same head -> same logits and same trainable count."""
    base = tiny_classifier(seed=3)
    ours = copy.deepcopy(base)
    names = inject_lora(ours, ["query", "value"], r=4, lora_alpha=16, lora_dropout=0.0)
    mark_only_lora_as_trainable(ours, ["classifier"])
    config = peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"],
                             modules_to_save=["classifier"], task_type="SEQ_CLS")
    ref = peft.get_peft_model(copy.deepcopy(base), config).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name in names:
            mine = ours.get_submodule(name)
            theirs = ref.base_model.model.get_submodule(name)
            mine.lora_A.copy_(torch.randn(mine.lora_A.shape, generator=g))
            mine.lora_B.copy_(torch.randn(mine.lora_B.shape, generator=g))
            theirs.lora_A["default"].weight.copy_(mine.lora_A)
            theirs.lora_B["default"].weight.copy_(mine.lora_B)
    ours.eval()
    with torch.no_grad():
        expected = ref(**batch()).logits
        got = ours(**batch()).logits
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(got, base(**batch()).logits, atol=1e-3)
    assert count_parameters(ours)[0] == sum(p.numel() for p in ref.parameters() if p.requires_grad)


VARIANTS = {"plain": {}, "rslora": {"use_rslora": True}, "dora": {"use_dora": True},
            "rslora+dora": {"use_rslora": True, "use_dora": True}}


def twin_models(variant: dict, dropout: float = 0.0, seed: int = 3):
    """Ours and PEFT's on the same tiny BERT, with the same random A, B, DoRA magnitude and head."""
    base = tiny_classifier(seed=seed)
    ours = copy.deepcopy(base)
    names = inject_lora(ours, ["query", "value"], r=4, lora_alpha=8, lora_dropout=dropout, **variant)
    mark_only_lora_as_trainable(ours, ["classifier"])
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["query", "value"],
                             task_type="SEQ_CLS", **variant)
    ref = peft.get_peft_model(copy.deepcopy(base), config)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name in names:
            mine, theirs = ours.get_submodule(name), ref.base_model.model.get_submodule(name)
            if variant.get("use_dora"):  # PEFT's magnitude starts at the same row norms as ours
                torch.testing.assert_close(theirs.lora_magnitude_vector["default"].weight, mine.lora_magnitude)
            mine.lora_A.copy_(torch.randn(mine.lora_A.shape, generator=g))
            mine.lora_B.copy_(torch.randn(mine.lora_B.shape, generator=g) * 0.1)
            theirs.lora_A["default"].weight.copy_(mine.lora_A)
            theirs.lora_B["default"].weight.copy_(mine.lora_B)
            if variant.get("use_dora"):
                mine.lora_magnitude.mul_(1 + 0.1 * torch.randn(mine.lora_magnitude.shape, generator=g))
                theirs.lora_magnitude_vector["default"].weight.copy_(mine.lora_magnitude)
        head = ref.base_model.model.classifier.modules_to_save["default"]
        ours.classifier.weight.copy_(torch.randn(ours.classifier.weight.shape, generator=g))
        head.weight.copy_(ours.classifier.weight)
    return ours, ref, names


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_variants_match_peft_logits_and_gradients(variant):
    """rsLoRA and DoRA against PEFT on the same weights: logits within 1e-5 (eval), and the same gradients
    of every trained tensor (A, B, magnitude, head) on one batch, within 1e-5."""
    ours, ref, names = twin_models(variant)
    ours.eval(), ref.eval()
    with torch.no_grad():
        got, expected = ours(**batch()).logits, ref(**batch()).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, tiny_classifier(seed=3)(**batch()).logits, atol=1e-3)
    labels = torch.tensor([0, 1, 1, 0])
    nn.functional.cross_entropy(ours(**batch()).logits, labels).backward()
    nn.functional.cross_entropy(ref(**batch()).logits, labels).backward()
    for name in names:
        mine, theirs = ours.get_submodule(name), ref.base_model.model.get_submodule(name)
        pairs = [(mine.lora_A, theirs.lora_A["default"].weight), (mine.lora_B, theirs.lora_B["default"].weight)]
        if variant.get("use_dora"):
            pairs.append((mine.lora_magnitude, theirs.lora_magnitude_vector["default"].weight))
        for a, b in pairs:
            assert a.grad is not None and a.grad.abs().sum() > 0
            torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.classifier.weight.grad,
                               ref.base_model.model.classifier.modules_to_save["default"].weight.grad, atol=1e-5, rtol=1e-4)
    assert count_parameters(ours)[0] == sum(p.numel() for p in ref.parameters() if p.requires_grad)


def test_dora_with_dropout_matches_peft_in_training():
    """With dropout active, DoRA's base term sees the dropped input, as PEFT computes it: same masks, same logits."""
    ours, ref, _ = twin_models({"use_dora": True}, dropout=0.3)
    ours.train(), ref.train()
    for module in list(ours.modules()) + list(ref.modules()):  # only the LoRA dropout stays random
        if isinstance(module, nn.Dropout) and module.p != 0.3:
            module.p = 0.0
    use_fast_dropout(ref)  # PEFT's LoRA dropout draws its masks as ours does (test_dropout.py tests the draw)
    torch.manual_seed(11)
    got = ours(**batch()).logits
    torch.manual_seed(11)
    expected = ref(**batch()).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_rslora_scaling_and_dora_identity_at_init():
    layer = nn.Linear(12, 6)
    assert LoRALinear(layer, r=4, lora_alpha=8, use_rslora=True).scaling == 8 / 2  # alpha / sqrt(r)
    assert LoRALinear(nn.Linear(12, 6), r=4, lora_alpha=8).scaling == 8 / 4
    dora = LoRALinear(layer, r=4, lora_alpha=8, use_dora=True)
    torch.testing.assert_close(dora.lora_magnitude.detach(), layer.weight.norm(dim=1))  # row norms of W0
    x = torch.randn(3, 12)
    torch.testing.assert_close(dora(x), layer(x))  # still the original layer at init
    assert "use_dora=True" in repr(dora)


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_variant_merge_is_exact_and_equals_unmerged(variant):
    """merged == unmerged outputs (DoRA folds m / ||W0 + dW|| into the weight), unmerge restores W0 bit for bit."""
    layer = nn.Linear(12, 6)
    original = layer.weight.detach().clone()
    lora = randomized(LoRALinear(layer, r=4, lora_alpha=8, **variant).eval())
    if variant.get("use_dora"):
        with torch.no_grad():
            lora.lora_magnitude.mul_(1.5)
    x = torch.randn(5, 12)
    unmerged = lora(x)
    lora.merge()
    torch.testing.assert_close(lora(x), unmerged, atol=1e-5, rtol=1e-5)
    lora.unmerge()
    assert torch.equal(layer.weight, original)
    torch.testing.assert_close(lora(x), unmerged)
