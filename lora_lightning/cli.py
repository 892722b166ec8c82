"""The command line: ``python -m lora_lightning fit|validate|test|predict --config configs/sst2.yaml``."""

from __future__ import annotations

from pytorch_lightning.cli import LightningCLI

from lora_lightning.data import SST2DataModule
from lora_lightning.model import LoRAClassifier


class LoRACLI(LightningCLI):
    """``LightningCLI`` with the data module's tokenizer linked to the model's ``model_name_or_path``."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.model_name_or_path")


def cli_main(args: list[str] | None = None, run: bool = True) -> LoRACLI:
    """Build and run the CLI. ``args`` as on the command line (``None``: ``sys.argv``)."""
    return LoRACLI(
        LoRAClassifier,
        SST2DataModule,
        seed_everything_default=42,
        args=args,
        run=run,
    )
