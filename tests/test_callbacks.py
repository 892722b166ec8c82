"""callbacks.py: the checkpoint callback's promises, forced on a tiny model (C28: the condition is made, not hoped for)."""

from pathlib import Path

import pytorch_lightning as pl
import torch

from conftest import quiet_trainer
from lora_lightning.callbacks import ModelCheckpoint
from lora_lightning.data import SST2DataModule
from lora_lightning.model import LoRAClassifier
from rank_probe import ScoreByEpoch


class NaNLogitsAtEpoch(LoRAClassifier):
    """The tiny classifier whose validation logits are NaN in epoch ``bad_epoch`` (an overflow, a bad merge)."""

    bad_epoch = 1

    def forward(self, *args, **kwargs):
        logits = super().forward(*args, **kwargs)
        if not self.training and self.current_epoch == self.bad_epoch and not self.trainer.sanity_checking:
            return torch.full_like(logits, float("nan"))
        return logits


def test_a_validation_that_is_not_finite_is_never_the_best(tmp_path, tiny_model_dir, toy_glue_dir):
    """val_acc forced to 0.5, 0.99, 0.6 (ScoreByEpoch) while epoch 1's logits are NaN: the best checkpoint is epoch 2's
    (0.6), never the 0.99 of a model whose loss is NaN, and said in one line; last.ckpt is the end."""
    pl.seed_everything(0)
    model = NaNLogitsAtEpoch(tiny_model_dir, learning_rate=1e-2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val_acc", mode="max", save_last=True,
                                 filename="epoch={epoch}-val_acc={val_acc:.2f}", auto_insert_metric_name=False)
    trainer = quiet_trainer(max_epochs=3, enable_checkpointing=True, callbacks=[ScoreByEpoch([0.5, 0.99, 0.6]), checkpoint])
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, SST2DataModule(tiny_model_dir, data_dir=toy_glue_dir, batch_size=32, val_split="random"))
    assert Path(checkpoint.best_model_path).name == "epoch=2-val_acc=0.60.ckpt"
    assert float(checkpoint.best_model_score) == torch.tensor(0.6).item()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=2-val_acc=0.60.ckpt", "last.ckpt"]
    assert any("the validation at step 12 had a loss or logits that are not finite (val_acc 0.9900)" in str(w.message)
               for w in caught)
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == trainer.global_step == 18
