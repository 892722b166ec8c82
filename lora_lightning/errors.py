"""Errors a user can fix: bad data, options, checkpoints or output paths.

The command line prints their message alone (one line, exit code 2) instead of a traceback.
"""


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


class OutputExistsError(LoRALightningError, FileExistsError):
    """An output file or folder exists and would be overwritten without ``overwrite``."""


class TrainingDivergedError(LoRALightningError, FloatingPointError):
    """The training loss became NaN or infinite."""


class LoRALightningWarning(UserWarning):
    """Something a user should know but that does not stop the run (an option overridden by a
    checkpoint, data that differs from the checkpoint's run, truncated sentences). The command line
    prints it as one line, ``warning: ...``, without a source path."""
