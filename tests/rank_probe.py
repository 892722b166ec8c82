"""A callback the DDP test loads by class path: each rank saves its trainable tensors at fit end."""

import os

import pytorch_lightning as pl
import torch


class SaveRankWeights(pl.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_fit_end(self, trainer, pl_module) -> None:
        state = {n: p.detach().cpu() for n, p in pl_module.named_parameters() if p.requires_grad}
        torch.save(state, os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"))
