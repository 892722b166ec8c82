"""Option values as plain Python: what a user passes from Python (``pathlib.Path``, numpy scalars, a string
for a list, a tuple) becomes what the command line would give (``str``, ``int``, ``float``, ``list``), so
that hyperparameters saved in a checkpoint load under ``torch.load(weights_only=True)`` and compare equal
across YAML and pickle round trips. Anything else is refused when the object is built, in one line.

Pure Python (numpy only through duck typing: ``numbers.Integral`` / ``numbers.Real`` and ``.item()``).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping

from lora_lightning.errors import OptionError, option


def _item(value):
    """A numpy (or torch) scalar as its Python value; anything else as it is."""
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()
    return value


def as_int(section: str, name: str, value, minimum: int | None = None) -> int | None:
    """``value`` as an ``int`` (Python or numpy integer, or a float with no fraction); ``None`` stays ``None``.

    Raises:
        OptionError: a bool, a fractional float, text, or below ``minimum``, naming the option.
    """
    if value is None:
        return None
    value = _item(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or int(value) != value:
        raise OptionError(f"{option(section, name)} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise OptionError(f"{option(section, name)} must be >= {minimum}, got {value}")
    return value


def as_float(section: str, name: str, value) -> float | None:
    """``value`` as a ``float`` (Python or numpy number); ``None`` stays ``None``.

    Raises:
        OptionError: a bool or anything that is not a real number, naming the option.
    """
    if value is None:
        return None
    value = _item(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionError(f"{option(section, name)} must be a number, got {value!r} ({type(value).__name__})")
    return float(value)


def as_bool(section: str, name: str, value) -> bool:
    """``value`` as a ``bool`` (Python or numpy bool).

    Raises:
        OptionError: anything else (``"false"`` is a string, not false), naming the option.
    """
    value = _item(value)
    if not isinstance(value, bool):
        raise OptionError(f"{option(section, name)} must be true or false, got {value!r} ({type(value).__name__})")
    return value


def as_str(section: str, name: str, value) -> str | None:
    """``value`` as a ``str``: a string, or a path (``pathlib.Path``, ``os.PathLike``); ``None`` stays ``None``.

    Raises:
        OptionError: anything else, naming the option.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise OptionError(f"{option(section, name)} must be a string or a path, got {value!r} ({type(value).__name__})")


def as_str_list(section: str, name: str, value) -> list[str]:
    """``value`` as a list of names: one string is one name (``"query"`` is ``["query"]``, not its letters);
    a list or tuple of strings is copied.

    Raises:
        OptionError: anything else, or an element that is not a string, naming the option.
    """
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise OptionError(f"{option(section, name)} must be a list of names (strings), got {value!r}")
    return list(value)


def as_id2label(section: str, name: str, value) -> dict | None:
    """``value`` as ``{int: str}``: a dict whose keys are integers (numpy too) or integer strings, or a list
    of names (index = class id). Values must be strings; the keys are checked by ``labels.resolve_id2label``.

    Raises:
        OptionError: another type, or a name that is not a string, naming the option.
    """
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = dict(enumerate(value))
    if not isinstance(value, Mapping):
        raise OptionError(f"{option(section, name)} must be a dict {{class id: name}} or a list of names, "
                          f"got {value!r} ({type(value).__name__})")
    out = {}
    for key, label in value.items():
        key = _item(key)
        if isinstance(key, numbers.Integral) and not isinstance(key, bool):
            key = int(key)
        out[key] = _item(label)
    return out
