"""The command line: ``python -m lora_lightning fit|validate|test|predict --config configs/sst2.yaml``."""

from __future__ import annotations

import sys

from pytorch_lightning.cli import LightningCLI

from lora_lightning.data import SST2DataModule
from lora_lightning.errors import LoRALightningError
from lora_lightning.model import LoRAClassifier, check_checkpoint


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
