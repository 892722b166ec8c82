"""How many tokens a model can take: its position table and its tokenizer's limit."""

from __future__ import annotations

from transformers import PretrainedConfig

# Model types whose position ids start after the padding index (RoBERTa's create_position_ids_from_input_ids):
# their max_position_embeddings rows hold max_position_embeddings - padding_idx - 1 tokens. The padding
# index is config.pad_token_id, except MPNet's, fixed at 1.
POSITIONS_AFTER_PADDING = frozenset({
    "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm", "data2vec-text",
    "longformer", "ibert", "mpnet", "xmod", "luke", "markuplm",
})
UNSET_TOKENIZER_LIMIT = 10**6  # a tokenizer saved without model_max_length reports ~1e30


def model_token_limit(config: PretrainedConfig, tokenizer=None) -> int | None:
    """The most tokens per sentence (``[CLS]`` and ``[SEP]`` included) the model can take.

    The smaller of: the rows of the model's position table (``max_position_embeddings``, or
    ``n_positions``), less ``padding_idx + 1`` for the RoBERTa-like ``POSITIONS_AFTER_PADDING`` model
    types whose position ids start after the padding index (RoBERTa-base: 514 rows, 512 tokens); and
    the tokenizer's ``model_max_length`` when it is set (a tokenizer saved without it reports ~1e30,
    which is ignored).

    Args:
        config: the model's config (``AutoConfig.from_pretrained``).
        tokenizer: the model's tokenizer, or ``None`` for the config's limit alone.

    Returns:
        tokens, or ``None`` when neither the config nor the tokenizer gives a limit.
    """
    limits = []
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(positions, int):
        if config.model_type in POSITIONS_AFTER_PADDING:
            padding_idx = 1 if config.model_type == "mpnet" else config.pad_token_id
            positions -= (padding_idx or 0) + 1
        limits.append(positions)
    tokenizer_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_max, int) and tokenizer_max < UNSET_TOKENIZER_LIMIT:
        limits.append(tokenizer_max)
    return min(limits, default=None)
