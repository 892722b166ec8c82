"""Errors a user can fix: bad data, options, checkpoints or output paths.

The command line prints their message alone (one line, exit code 2) instead of a traceback.
"""

import contextvars
import difflib
import re
from contextlib import contextmanager

# Set while the command line runs: errors then name options as its flags (``model.r``), else as the
# Python arguments a user passed (``r``).
_COMMAND_LINE = contextvars.ContextVar("lora_lightning_command_line", default=False)


def option(section: str, name: str) -> str:
    """How an error names an option: ``model.r`` / ``data.max_length`` under the command line (``cli.py``),
    ``r`` / ``max_length`` (the argument of ``LoRAClassifier`` / the data module) from Python."""
    return f"{section}.{name}" if _COMMAND_LINE.get() else name


def prefix(section: str) -> str:
    """``model.`` under the command line, ``""`` from Python: the prefix ``option`` would put before a name."""
    return f"{section}." if _COMMAND_LINE.get() else ""


@contextmanager
def command_line():
    """Errors raised inside name options as command-line flags (see ``option``)."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


class LoRALightningError(Exception):
    """Base of the user-facing errors; the message names the file, line or option and what was expected."""


class DataFileError(LoRALightningError, ValueError):
    """A GLUE-format file is missing or malformed; the message names the file (and line)."""


class OptionError(LoRALightningError, ValueError):
    """An option (``model.*``, ``data.*``) is out of range or does not fit the model or data."""


class CheckpointError(LoRALightningError, ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model (names the key or option)."""


class ModelNotFoundError(LoRALightningError, OSError):
    """``model_name_or_path`` is neither a local folder, a packaged model, nor reachable on the Hub."""


class ModelFileError(LoRALightningError, OSError):
    """A local model folder lacks a file it needs (config, weights, tokenizer), or holds a damaged one."""


class OutputExistsError(LoRALightningError, FileExistsError):
    """An output file or folder exists and would be overwritten without ``overwrite``."""


class TrainingDivergedError(LoRALightningError, FloatingPointError):
    """The training loss became NaN or infinite."""


class LoRALightningWarning(UserWarning):
    """Something a user should know but that does not stop the run (an option overridden by a
    checkpoint, data that differs from the checkpoint's run, truncated sentences). The command line
    prints it as one line, ``warning: ...``, without a source path."""


def _option_names(parser) -> list[str]:
    """Every dotted option of an argparse/jsonargparse ``parser`` and its subcommands (``model.r``, ...)."""
    names = []
    for action in parser._actions:
        names += [s.lstrip("-") for s in action.option_strings if s.startswith("--")]
        for sub in (getattr(action, "choices", None) or {}).values():
            if hasattr(sub, "_actions"):
                names += _option_names(sub)
    return sorted(set(names))


class OneLineErrors:
    """Mixin for an argparse-style parser: its errors become one ``OptionError`` line with a "did you
    mean" (close option names, by ``difflib``), instead of the usage text and an exit."""

    def error(self, message: str, ex: Exception | None = None):
        line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
        known = _option_names(self)
        unknown = re.findall(r"--([\w.\-]+)", line) + re.findall(r'key "([\w.]+)"', line)
        guesses = [g for word in unknown if word not in known
                   for g in difflib.get_close_matches(word, known, n=1, cutoff=0.6)]
        hint = f"; did you mean --{guesses[0]}?" if guesses else ""
        prog = getattr(self, "prog", "python -m lora_lightning").split(" [")[0]
        raise OptionError(f"{line}{hint} (every option: {getattr(self, 'help_hint', None) or prog + ' --help'})") from ex
