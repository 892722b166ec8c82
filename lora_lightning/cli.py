"""The command line: ``python -m lora_lightning fit|validate|test|predict --config configs/sst2.yaml``."""

from __future__ import annotations

import sys

import torch
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities import rank_zero_warn

from lora_lightning.data import SST2DataModule
from lora_lightning.errors import LoRALightningError
from lora_lightning.checkpoint import check_checkpoint, normalise_hparam
from lora_lightning.model import LoRAClassifier


class LoRACLI(LightningCLI):
    """``LightningCLI`` with the data module's tokenizer linked to the model's ``model_name_or_path``."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.model_name_or_path")

    def parse_arguments(self, parser, args) -> None:
        """Parse, then refuse a bad ``--ckpt_path`` in one line before Lightning reads its hyperparameters."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path is not None and str(ckpt_path) not in ("best", "last", "hpc", "registry"):
            check_checkpoint(ckpt_path)
            self._say_checkpoint_options_win(ckpt_path, self.config[subcommand])

    @staticmethod
    def _say_checkpoint_options_win(ckpt_path: str, config) -> None:
        """LightningCLI rebuilds the model from the checkpoint's hyperparameters (Lightning #20310):
        say so when they differ from the config or command line, instead of overriding them silently."""
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
        for name in ("r", "lora_alpha", "lora_dropout", "target_modules", "train_pooler", "model_name_or_path"):
            given = config["model"].get(name) if "model" in config else None
            if name in saved and given is not None and normalise_hparam(given) != normalise_hparam(saved[name]):
                rank_zero_warn(f"--ckpt_path: using the checkpoint's model.{name}={saved[name]!r}, "
                               f"not model.{name}={given!r} from the config / command line")


def cli_main(args: list[str] | None = None, run: bool = True) -> LoRACLI:
    """Build and run the CLI. ``args`` as on the command line (``None``: ``sys.argv``)."""
    return LoRACLI(
        LoRAClassifier,
        SST2DataModule,
        seed_everything_default=42,
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> int:
    """``cli_main`` for the shell: a ``LoRALightningError`` prints as one line, exit status 2."""
    try:
        cli_main(args)
    except LoRALightningError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
