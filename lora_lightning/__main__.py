"""``python -m lora_lightning fit|validate|test|predict|export ...`` (see ``cli.py``).

Errors a user can fix (bad data, option, checkpoint, output path) print as one line, exit status 2.
"""

import sys

from lora_lightning.cli import main

if __name__ == "__main__":
    sys.exit(main())
