"""The problem types, one file each, named as transformers names them (``config.problem_type``).

``get_task(problem_type)`` is the class the rest of the package asks (see ``base.Task``): adding a type is one
file here and a line in ``TASKS``.
"""

from __future__ import annotations

from typing import Literal

from lora_lightning.errors import OptionError, option
from lora_lightning.tasks.base import LabelSpec, Task
from lora_lightning.tasks.multi_label import MultiLabel
from lora_lightning.tasks.regression import Regression
from lora_lightning.tasks.single_label import SingleLabel

TASKS: dict[str, type[Task]] = {t.problem_type: t for t in (SingleLabel, MultiLabel, Regression)}
ProblemType = Literal["single_label_classification", "multi_label_classification", "regression"]

__all__ = ["TASKS", "ProblemType", "Task", "LabelSpec", "SingleLabel", "MultiLabel", "Regression", "get_task"]


def get_task(problem_type: str, section: str = "model") -> type[Task]:
    """The ``Task`` class of ``problem_type``.

    Raises:
        OptionError: an unknown name, listing the known ones.
    """
    try:
        return TASKS[problem_type]
    except KeyError:
        raise OptionError(f"{option(section, 'problem_type')} must be one of {list(TASKS)}, got {problem_type!r}") from None
