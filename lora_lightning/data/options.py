"""The data module's options as plain values, and the checks that need neither a model nor a file.

Pure Python (``values.py``, ``errors.py``, ``tasks`` for the problem types): ``TextClassificationDataModule`` calls
``plain_options`` and ``check_options`` when it is built, so a bad option fails before anything loads.
"""

from __future__ import annotations

from pathlib import Path

from lora_lightning.errors import OptionError, option
from lora_lightning.tasks import TASKS
from lora_lightning.values import as_bool, as_float, as_int, as_str, as_str_list

# The data options by kind
_STRINGS = ("train_file", "validation_file", "test_file", "predict_file", "text_column", "text_pair_column",
            "label_column", "model_name_or_path", "data_dir", "problem_type", "label_delimiter", "tsv_quoting",
            "length_grouping", "val_split")
_INTEGERS = ("batch_size", "eval_batch_size", "max_length", "seed", "max_train_samples", "max_eval_samples", "num_workers")
_BOOLEANS = ("group_by_length", "sort_eval_by_length")
_LISTS = ("labels", "label_columns", "column_names", "label_names")


def _texts(values) -> list:
    """A list of names, each a number given as its text (numpy numbers too)."""
    return [v if isinstance(v, str) else str(getattr(v, "item", lambda: v)())
            for v in (values if isinstance(values, (list, tuple)) else [values])]


def plain_options(**options) -> dict:
    """The data module's options as plain Python values (``save_hyperparameters`` stores them, and a checkpoint
    must load under ``weights_only``: C22): paths as ``str``, numpy numbers as ``int``/``float``/``bool``, names as a
    list of strings; ``group_column`` a name or a list of names; ``label_names`` given as a ``.txt`` path read into
    its lines (one name per line, GoEmotions' ``labels.txt``).

    Raises:
        OptionError: a value of the wrong type, naming the option (see ``values``); a ``label_names`` file missing.
    """
    out = {}
    for name, value in options.items():
        if value is None:
            pass
        elif name in _STRINGS:
            value = as_str("data", name, value)
        elif name in _INTEGERS:
            value = as_int("data", name, value)
        elif name == "val_fraction":
            value = as_float("data", name, value)
        elif name in _BOOLEANS:
            value = as_bool("data", name, value)
        elif name == "label_names" and isinstance(value, (str, Path)):
            path = Path(value).expanduser()
            if not path.is_file():
                raise OptionError(f"{option('data', 'label_names')}: {path}: file not found (a list of names, or a .txt "
                                  "file of one name per line)")
            value = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        elif name in _LISTS:
            value = as_str_list("data", name, _texts(value))
        elif name == "group_column":
            value = as_str("data", name, value) if isinstance(value, (str, Path)) else as_str_list("data", name, _texts(value))
        out[name] = value
    return out


def check_options(o: dict) -> None:
    """Refuse options out of range or that contradict each other, one line naming them.

    Raises:
        OptionError: ``val_fraction`` outside (0, 1), ``max_length`` < 2, ``batch_size`` or ``eval_batch_size``
            < 1, ``max_train_samples`` / ``max_eval_samples`` < 1, ``num_workers`` < 0, ``seed`` outside
            [0, 2**32 - 1], ``labels`` / ``label_names`` naming a class twice (or fewer than 2 for single-label),
            an unknown ``problem_type``, ``label_columns`` for single-label, an empty ``label_delimiter``, two column
            options naming the same column.
    """
    if not 0 < o["val_fraction"] < 1:
        raise OptionError(f"{option('data', 'val_fraction')} must be in (0, 1), got {o['val_fraction']}")
    if o["max_length"] < 2:
        raise OptionError(f"{option('data', 'max_length')} must be >= 2 tokens, got {o['max_length']}")
    if o["batch_size"] < 1 or o["eval_batch_size"] < 1:
        raise OptionError(f"{option('data', 'batch_size')} and {option('data', 'eval_batch_size')} must be >= 1, "
                          f"got {o['batch_size']}, {o['eval_batch_size']}")
    for name in ("max_train_samples", "max_eval_samples"):
        if o.get(name) is not None and o[name] < 1:  # 0 would leave an empty loader: no val_acc for the checkpoint
            raise OptionError(f"{option('data', name)} must be >= 1 (or null for all), got {o[name]}")
    if o["num_workers"] < 0:
        raise OptionError(f"{option('data', 'num_workers')} must be >= 0, got {o['num_workers']}")
    if not 0 <= o["seed"] < 2**32:  # numpy's split refuses negative seeds; Lightning's seeds are uint32 too
        raise OptionError(f"{option('data', 'seed')} must be in [0, 2**32 - 1], got {o['seed']}")
    problem_type = o.get("problem_type") or "single_label_classification"
    if problem_type not in TASKS:
        raise OptionError(f"{option('data', 'problem_type')} must be one of {list(TASKS)}, got {problem_type!r}")
    fewest = TASKS[problem_type].min_labels
    for name in ("labels", "label_names"):
        names = o.get(name)
        if names is not None and (len(names) < fewest or len(set(names)) < len(names)):
            raise OptionError(f"{option('data', name)} must name at least {fewest} classes, each once, got {names}")
    if o.get("label_columns") is not None and not TASKS[problem_type].takes_label_columns:
        raise OptionError(f"{option('data', 'label_columns')}={o['label_columns']}: one column per label is for "
                          f"{option('data', 'problem_type')}=multi_label_classification (0/1 columns) or regression "
                          f"(one target each); a single-label file has one {option('data', 'label_column')}")
    if o.get("label_delimiter") == "":
        raise OptionError(f"{option('data', 'label_delimiter')} must not be empty (e.g. ',' or ';')")
    groups = o.get("group_column")
    named = [("text_column", o.get("text_column")), ("text_pair_column", o.get("text_pair_column"))]
    named += [("label_columns", c) for c in o.get("label_columns") or []] or [("label_column", o.get("label_column"))]
    if isinstance(groups, str):
        named.append(("group_column", groups))
    named = [(k, v) for k, v in named if v is not None]
    if len({v for _, v in named}) < len(named):
        shown = ", ".join(f"{option('data', k)}={v!r}" for k, v in named)
        raise OptionError(f"{shown}: each must name a different column")
