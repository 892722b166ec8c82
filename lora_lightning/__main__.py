"""``python -m lora_lightning fit|validate|test|predict ...`` (LightningCLI) or ``... export ...``."""

import sys

from lora_lightning.cli import cli_main
from lora_lightning.export import export_main

if __name__ == "__main__":
    if sys.argv[1:2] == ["export"]:
        export_main(sys.argv[2:])
    else:
        cli_main()
