"""The classes a model predicts: ``num_labels`` and their names ``id2label``, checked and normalised.

Pure Python (``errors.py`` only): ``backbone.py`` builds the head from it, ``checkpoint.py`` compares a
checkpoint's labels with a model's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from lora_lightning.errors import OptionError, option

# SST-2's names, the default for 2 labels (and what checkpoints from before num_labels/id2label had).
ID2LABEL = {0: "negative", 1: "positive"}


def resolve_id2label(num_labels: int, id2label: Mapping | None = None, min_labels: int = 2,
                     sst2_names: bool = True) -> dict[int, str]:
    """The name of every class, ``{0: name, ..., num_labels - 1: name}`` in index order.

    Args:
        num_labels: the number of outputs K (the head's width), at least ``min_labels`` (2 classes for a
            single-label classifier; 1 label or target for multi-label and regression).
        id2label: class index -> name; keys may be strings (``"0"``, after a YAML or hyperparameter
            round trip) and become ints. ``None``: SST-2's ``negative``/``positive`` when K is 2 (and
            ``sst2_names``), else transformers' ``LABEL_<i>``.

    Returns:
        a new ``dict[int, str]`` with the keys ``0..K-1`` in order.

    Raises:
        OptionError: ``num_labels`` not an integer >= 2 (naming ``model.num_labels``); keys of
            ``id2label`` not exactly ``0..K-1``, a name that is not a string, or a name that repeats
            (naming ``model.id2label``). One line each.
    """
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < min_labels:
        raise OptionError(f"{option('model', 'num_labels')} must be an integer >= {min_labels}, got {num_labels!r}")
    if id2label is None:
        return dict(ID2LABEL) if num_labels == 2 and sst2_names else {i: f"LABEL_{i}" for i in range(num_labels)}
    keys = [_index(key) for key in id2label]
    if len(keys) != num_labels or set(keys) != set(range(num_labels)):
        raise OptionError(f"{option('model', 'id2label')} must have exactly the keys 0..{num_labels - 1} "
                          f"({option('model', 'num_labels')}={num_labels}), got keys {list(id2label)}")
    names = dict(sorted(zip(keys, id2label.values())))
    odd = [name for name in names.values() if not isinstance(name, str)]
    if odd:
        raise OptionError(f"{option('model', 'id2label')} names must be strings, got {odd[0]!r}")
    repeated = [name for name, count in Counter(names.values()).items() if count > 1]
    if repeated:
        raise OptionError(f"{option('model', 'id2label')} names must differ, but {repeated} name more than one class: {names}")
    return names


def _index(key) -> int | str:
    """``key`` as an int if it is one (``3`` or ``"3"``), else as text (for the caller to refuse)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and key.strip().lstrip("-").isdigit():
        return int(key)
    return str(key)
