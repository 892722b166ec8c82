"""Labeled text as ``LightningDataModule``s: your own files (``TextClassificationDataModule``) and
SST-2, the default task (``SST2DataModule``).

- ``base.py``: the data module (read, split, tokenise, batch);
- ``sst2.py``: SST-2's files and preset;
- ``splits.py``: the val split (grouped by source sentence or by a column) and the duplicate check;
- ``samplers.py``: length-grouped training order; ``limits.py``: a model's token limit.
"""

from lora_lightning.data.base import TextClassificationDataModule
from lora_lightning.data.limits import model_token_limit
from lora_lightning.data.samplers import EpochLengthGroupedSampler, SortedLengthBatchSampler
from lora_lightning.data.sst2 import FILES, HUB_DATASET, SST2DataModule, find_data_dir, read_split
from lora_lightning.errors import DataFileError, OptionError

__all__ = ["TextClassificationDataModule", "SST2DataModule", "EpochLengthGroupedSampler", "SortedLengthBatchSampler",
           "model_token_limit", "find_data_dir", "read_split", "FILES", "HUB_DATASET", "DataFileError", "OptionError"]
