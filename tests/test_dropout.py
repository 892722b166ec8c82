"""Dropout with a torch.rand mask (dropout.py): nn.Dropout's distribution, seeded by torch, swapped into models."""

import pytest
import torch
from torch import nn

from conftest import tiny_config
from lora_lightning.dropout import Dropout, use_fast_dropout

N = 1_000_000


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_same_distribution_as_nn_dropout(p):
    """Kept with probability 1 - p (within 5 standard errors over 1e6 elements, as nn.Dropout is),
    kept elements scaled by exactly 1 / (1 - p), so the mean stays 1."""
    torch.manual_seed(0)
    ones = torch.ones(N)
    ours, theirs = Dropout(p)(ones), nn.Dropout(p)(ones)
    tolerance = 5 * (p * (1 - p) / N) ** 0.5
    for out in (ours, theirs):
        kept = out != 0
        assert abs(kept.float().mean().item() - (1 - p)) < tolerance
    assert torch.equal(ours[ours != 0], torch.full_like(ours[ours != 0], 1 / (1 - p)))
    assert abs(ours.mean().item() - 1) < tolerance / (1 - p)


def test_masks_are_independent_of_position():
    """No pattern along the tensor: the keep rate of even and odd elements, and of each element's
    right neighbour given it was dropped, are all 1 - p (within 5 standard errors)."""
    torch.manual_seed(1)
    kept = Dropout(0.3)(torch.ones(N)) != 0
    tolerance = 5 * (0.21 / (N / 2)) ** 0.5
    assert abs(kept[0::2].float().mean().item() - 0.7) < tolerance
    assert abs(kept[1::2].float().mean().item() - 0.7) < tolerance
    after_drop = kept[1:][~kept[:-1]]
    assert abs(after_drop.float().mean().item() - 0.7) < 5 * (0.21 / len(after_drop)) ** 0.5


def test_gradient_is_the_mask():
    """d(sum(dropout(x)))/dx is 1/(1-p) where kept and 0 where dropped, as nn.Dropout's."""
    x = torch.randn(64, 32, requires_grad=True)
    out = Dropout(0.2)(x)
    out.sum().backward()
    kept = out != 0
    assert torch.equal(x.grad, kept.float() / 0.8)
    torch.testing.assert_close(out[kept], x[kept] / 0.8)


def test_seeded_by_torch_and_off_in_eval():
    x = torch.randn(8, 16)
    layer = Dropout(0.5)
    torch.manual_seed(5)
    first = layer(x)
    torch.manual_seed(5)
    assert torch.equal(layer(x), first)  # seed_everything / manual_seed govern the masks
    assert not torch.equal(layer(x), first)  # and the next draw differs
    assert torch.equal(layer.eval()(x), x)  # eval: identity
    assert torch.equal(Dropout(0.0)(x), x)
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))  # p = 1 is nn.Dropout's


def test_half_precision_and_inplace():
    """A bfloat16 input stays bfloat16 with the float32 draw's keep rate; inplace changes the input."""
    torch.manual_seed(2)
    out = Dropout(0.1)(torch.ones(N, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert abs((out != 0).float().mean().item() - 0.9) < 5 * (0.09 / N) ** 0.5
    x = torch.ones(1000)
    out = Dropout(0.5, inplace=True)(x)
    assert out is x and (x == 0).any()


def test_use_fast_dropout_replaces_every_plain_dropout():
    """Tiny BERT classifier: embeddings 1 + 3 per layer x 2 layers + classifier 1 = 8 modules, p and mode kept."""
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification(tiny_config(num_labels=2, hidden_dropout_prob=0.2)).eval()
    assert use_fast_dropout(model) == 8
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 8 and all(type(m) is Dropout for m in dropouts)
    assert model.bert.embeddings.dropout.p == 0.2 and not model.bert.embeddings.dropout.training
    assert use_fast_dropout(model) == 0  # ours are not replaced again


def test_classifier_uses_it_everywhere(tiny_model_dir):
    """LoRAClassifier: no torch nn.Dropout is left, in the backbone or in LoRA's branch."""
    from lora_lightning.model import LoRAClassifier

    module = LoRAClassifier(tiny_model_dir, lora_dropout=0.1)
    dropouts = [m for m in module.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 8 + 4  # backbone's 8, LoRA's on query and value of 2 layers
    assert all(type(m) is Dropout for m in dropouts)
