"""``python -m lora_lightning fit|validate|test|predict ...`` (LightningCLI) or ``... export ...``.

Errors a user can fix (bad data, option, checkpoint, output path) print as one line, exit status 2.
"""

import sys

from lora_lightning.cli import main
from lora_lightning.errors import LoRALightningError
from lora_lightning.export import export_main

if __name__ == "__main__":
    if sys.argv[1:2] == ["export"]:
        try:
            export_main(sys.argv[2:])
        except LoRALightningError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
    else:
        sys.exit(main())
