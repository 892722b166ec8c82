"""The backbone (backbone.py): the last layer computed for the first token only, exactly."""

import copy

import pytest
import torch

from lora_lightning.backbone import last_layer_first_token_only, load_backbone


def padded_batch(vocab: int = 26) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0  # a padded row
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_roberta_dir"])
def test_first_token_only_gives_the_same_logits_and_gradients(fixture, request):
    """BERT and RoBERTa: the pruned last layer outputs (B, 1, hidden), and the logits and every
    parameter's gradient equal the full model's (float rounding, 1e-5), padded rows included."""
    torch.manual_seed(0)
    model, _ = load_backbone(request.getfixturevalue(fixture), dropout=0.0)
    full = copy.deepcopy(model)
    first_token_only = last_layer_first_token_only(model)
    assert first_token_only
    shapes = []
    last = getattr(model, model.base_model_prefix).encoder.layer[-1]
    last.output.register_forward_hook(lambda m, args, out: shapes.append(tuple(out.shape)))
    model.train(), full.train()
    with first_token_only:
        logits = model(**padded_batch()).logits
    expected = full(**padded_batch()).logits
    assert shapes == [(3, 1, model.config.hidden_size)]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    (logits * torch.tensor([1.0, -2.0])).sum().backward()
    (expected * torch.tensor([1.0, -2.0])).sum().backward()
    grads = 0
    for (name, p), (_, q) in zip(model.named_parameters(), full.named_parameters()):
        if q.grad is not None and q.grad.abs().sum() > 0:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
            grads += 1
    assert grads > 20  # every layer's weights got a gradient, the last layer's FFN included


def test_other_heads_are_left_alone(tiny_distilbert_dir, tiny_model_dir):
    """DistilBERT is not in FIRST_TOKEN_HEADS: nothing changes. LoRAClassifier prunes BERT by itself."""
    from lora_lightning.model import LoRAClassifier

    model, _ = load_backbone(tiny_distilbert_dir)
    assert not last_layer_first_token_only(model)
    assert not any(m._forward_pre_hooks for m in model.modules())
    module = LoRAClassifier(tiny_model_dir)
    assert module.model.bert.encoder.layer[-1].attention.output._forward_pre_hooks
    assert not module.model.bert.encoder.layer[0].attention.output._forward_pre_hooks


def test_hidden_states_are_whole_outside_the_classifier_call(tiny_model_dir):
    """Issue 19: the [CLS]-only speed-up is confined to LoRAClassifier.forward; the backbone called by itself
    returns every position, as transformers' model does (B, T, H), with hidden states equal to an unpatched copy."""
    from transformers import AutoModel

    from lora_lightning.model import LoRAClassifier

    clf = LoRAClassifier(tiny_model_dir, lora_dropout=0.0, backbone_dropout=0.0).eval()
    batch = padded_batch()
    out = clf.model(**batch, output_hidden_states=True)
    assert out.hidden_states[-1].shape == (3, 7, 32)
    assert clf.model.bert(**batch).last_hidden_state.shape == (3, 7, 32)
    plain = AutoModel.from_pretrained(tiny_model_dir).eval()
    torch.testing.assert_close(clf.model.bert(**batch).last_hidden_state, plain(**batch).last_hidden_state)
    torch.testing.assert_close(clf(**batch), out.logits, atol=1e-6, rtol=1e-5)  # the fast call: the same logits


@pytest.mark.parametrize("how", ["option", "transformers"])
def test_gradient_checkpointing_gives_the_same_gradients(how, tiny_model_dir):
    """transformers' gradient (activation) checkpointing, switched on by model.gradient_checkpointing or by the user
    on the backbone, recomputes each layer in the backward pass outside LoRAClassifier.forward: the [CLS]-only last
    layer steps aside, and the loss and every trainable gradient equal those without checkpointing (1e-6)."""
    from conftest import sentence_batch
    from lora_lightning.model import LoRAClassifier

    def run(checkpointing: bool):
        torch.manual_seed(0)
        model = LoRAClassifier(tiny_model_dir, lora_dropout=0.0, backbone_dropout=0.0,
                               gradient_checkpointing=checkpointing and how == "option")
        if checkpointing and how == "transformers":
            model.model.gradient_checkpointing_enable()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("lora_B"):
                    p.normal_()
        model.train()
        loss = model(**sentence_batch(tiny_model_dir)).logsumexp(-1).sum()
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    (plain_loss, plain), (loss, grads) = run(False), run(True)
    torch.testing.assert_close(loss, plain_loss, atol=1e-6, rtol=1e-6)
    assert grads.keys() == plain.keys() and len(grads) == 2 * 2 * 2 + 2
    for name in grads:
        torch.testing.assert_close(grads[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
