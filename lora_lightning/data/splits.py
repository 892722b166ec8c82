"""The val split, held out so that it shares as little as possible with train, and the checks that say so.

Pure Python (and numpy for the seeded order): no torch, no Lightning.

SST-2's train set is not 67,349 independent sentences: it is every (non-neutral) phrase of the parse
trees of ~8,500 movie-review sentences (Socher et al. 2013), so a random 90/10 split puts most val
phrases inside a train phrase of the same sentence (72% of them, counted as whole words; GLUE dev: 0.2%).
``phrase_groups`` recovers the sentences: a phrase that no other phrase contains is a sentence (or the
largest surviving piece of one); every phrase inside exactly one sentence belongs to it; a phrase inside
several ("good", "the film") belongs to none of them alone and stays on the train side. ``group_split``
then puts whole groups on one side. By construction no val phrase is then inside a train phrase:
``phrase_overlap`` counts it independently.

For a user's own data, the groups are a column's values (``data.group_column``: a review id, a user,
a source document), and ``duplicate_texts`` finds rows of one split whose text is also in another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence
from functools import lru_cache

import numpy as np

__all__ = ["phrase_groups", "group_split", "linked_groups", "stratified_split", "inside_phrases", "phrase_overlap", "duplicate_texts", "normalise_text", "SHARED"]

SHARED = None  # the group of a row that belongs to no single group: always on the train side


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def phrase_groups(phrases: Sequence[str]) -> list[int | None]:
    """The source sentence of every phrase of a phrase-structured data set such as SST-2's train set.

    Words are whitespace-separated tokens; "inside" means as a run of whole words. A phrase inside no
    other phrase is a sentence (its own group); a phrase inside exactly one sentence is in that
    sentence's group; a phrase inside several sentences is ``SHARED`` (``None``). Duplicate rows of one
    phrase get the same group. Deterministic: groups are numbered in the order their sentences first
    appear in ``phrases``.

    Cost: every run of words of every sentence is looked up once (~1.3M on SST-2: about 3 s); a
    phrase already inside a longer one adds no work.

    Args:
        phrases: one text per row, e.g. SST-2's ``sentence`` column (67,349 rows).

    Returns:
        one group per row: an int (``0..S-1``, S sentences), or ``None`` for a shared phrase.
    """
    return list(_phrase_groups(_digest(phrases), tuple(phrases)))


def _digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


@lru_cache(maxsize=4)
def _phrase_groups(digest: str, phrases: tuple[str, ...]) -> tuple[int | None, ...]:
    """``phrase_groups``, memoised per process by content (``digest``), so a second ``setup`` is free."""
    keys = [" ".join(_words(p)) for p in phrases]
    distinct = list(dict.fromkeys(keys))  # first-appearance order
    index = {k: i for i, k in enumerate(distinct)}
    words = [k.split(" ") if k else [] for k in distinct]
    longest_first = sorted(range(len(distinct)), key=lambda i: -len(words[i]))  # stable: ties in file order
    owners: list[list[int]] = [[] for _ in distinct]
    inside = [False] * len(distinct)
    sentences = []
    for i in longest_first:
        if inside[i]:  # inside a longer phrase: its runs were looked up with that one's
            continue
        sentences.append(i)
        w, n = words[i], len(words[i])
        for a in range(n):
            for b in range(a + 1, n + 1 if a else n):  # every run but the whole phrase
                j = index.get(" ".join(w[a:b]))
                if j is not None and (not owners[j] or owners[j][-1] != i):
                    inside[j] = True
                    owners[j].append(i)
    number = {s: g for g, s in enumerate(sorted(sentences))}  # by first appearance
    group_of = [number[i] if not inside[i] else number[owners[i][0]] if len(owners[i]) == 1 else SHARED
                for i in range(len(distinct))]
    return tuple(group_of[index[k]] for k in keys)


def linked_groups(columns: Sequence[Sequence]) -> list[str]:
    """The group of every row for ``group_split``, from one or more columns of values.

    One column: its value, as text (a row without one, ``None``, is a group of its own). Several (a sentence pair's
    ``[sentence1, sentence2]``): rows that share any value, in any of the columns, are one group, and so, in a
    chain, are the rows linked to them (connected components, union-find): a sentence on one side of the split
    is never on the other, whichever column holds it.

    Returns:
        one group name per row (text), the same for the rows of one group.
    """
    rows = len(columns[0]) if columns else 0
    if len(columns) == 1:
        return [f"\0row {i}" if v is None else str(v) for i, v in enumerate(columns[0])]
    parent = list(range(rows))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict = {}
    for column in columns:
        for i, value in enumerate(column):
            if value is None:
                continue
            j = first.setdefault(str(value), i)
            a, b = root(i), root(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return [f"\0group {root(i)}" for i in range(rows)]


def group_split(groups: Sequence[Hashable | None], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split row indices into train and val with every group wholly on one side.

    Distinct groups (``None`` excepted) are taken in a seeded random order (numpy's ``default_rng(seed)``
    over the groups in order of first appearance) and put in val until val holds at least
    ``val_fraction`` of all rows (so it overshoots by less than one group); rows whose group is ``None``
    always train. At least one group stays in train.

    Args:
        groups: one group per row (any hashable; ``None``: no group, train).
        val_fraction: the share of rows to hold out, in (0, 1).
        seed: the order's seed.

    Returns:
        ``(train_indices, val_indices)``, each in row order.

    Raises:
        ValueError: fewer than 2 distinct groups (nothing can be held out whole).
    """
    rows_of: dict = {}
    for i, g in enumerate(groups):
        if g is not None:
            rows_of.setdefault(g, []).append(i)
    names = list(rows_of)
    if len(names) < 2:
        raise ValueError(f"{len(names)} distinct group(s): at least 2 are needed to hold one out")
    target = val_fraction * len(groups)
    held: set = set()
    count = 0
    for k in np.random.default_rng(seed).permutation(len(names)).tolist():
        if count >= target or len(held) == len(names) - 1:
            break
        held.add(names[k])
        count += len(rows_of[names[k]])
    train = [i for i, g in enumerate(groups) if g not in held or g is None]
    val = [i for i, g in enumerate(groups) if g is not None and g in held]
    return train, val


def stratified_split(labels: Sequence[Hashable], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split row indices into train and val with every class in both in proportion, and every class in train.

    ``ceil(val_fraction * N)`` rows go to val (as ``datasets``' ``train_test_split`` counts them), shared among
    the classes by their size (largest remainder), each class keeping at least one train row: a class of one
    row trains, and a rare class is never held out whole (C36). Within a class, the rows held out are a seeded
    random choice (numpy's ``default_rng(seed)``, classes in order of first appearance).

    Args:
        labels: one class per row (any hashable; for multi-label rows, their label set as a tuple).
        val_fraction: the share of rows to hold out, in (0, 1).
        seed: the choice's seed.

    Returns:
        ``(train_indices, val_indices)``, each in row order.

    Raises:
        ValueError: no row can be held out (every class has a single row).
    """
    rows_of: dict = {}
    for i, y in enumerate(labels):
        rows_of.setdefault(y, []).append(i)
    spare = {y: len(rows) - 1 for y, rows in rows_of.items()}  # what a class can give while keeping one train row
    wanted = min(int(np.ceil(val_fraction * len(labels))), sum(spare.values()))
    if wanted < 1:
        raise ValueError(f"{len(rows_of)} classes of one row each: none can be held out")
    exact = {y: val_fraction * len(rows) for y, rows in rows_of.items()}
    take = {y: min(int(exact[y]), spare[y]) for y in rows_of}
    by_remainder = sorted(rows_of, key=lambda y: -(exact[y] - int(exact[y])))  # stable: ties in first-appearance order
    while sum(take.values()) < wanted:
        for y in by_remainder:
            if sum(take.values()) < wanted and take[y] < spare[y]:
                take[y] += 1
    rng = np.random.default_rng(seed)
    held = set()
    for y, rows in rows_of.items():
        held.update(rows[k] for k in rng.permutation(len(rows))[: take[y]].tolist())
    return [i for i in range(len(labels)) if i not in held], sorted(held)


def inside_phrases(train: Sequence[str], others: Sequence[str]) -> list[bool]:
    """For each of ``others``, whether it occurs inside some phrase of ``train`` as a run of whole words (equal to one
    counts). Independent of ``phrase_groups``: every run of words of every train phrase is collected (a phrase
    already inside a longer one is skipped: its runs are in already).

    Meant for short phrases (SST-2: ~19 words at most per sentence on average); a train set of long
    documents costs the square of their length.
    """
    runs: set[str] = set()
    for w in sorted({_words(t) for t in train}, key=len, reverse=True):
        if " ".join(w) in runs:
            continue
        n = len(w)
        runs.update(" ".join(w[a:b]) for a in range(n) for b in range(a + 1, n + 1))
    return [" ".join(_words(t)) in runs for t in others]


def phrase_overlap(train: Sequence[str], others: Sequence[str]) -> float:
    """The share of ``others`` inside some phrase of ``train`` (``inside_phrases``), in [0, 1] (0.0 for no ``others``);
    memoised per process by content, like ``phrase_groups``."""
    return _overlap(_digest(train), _digest(others), tuple(train), tuple(others))


@lru_cache(maxsize=8)
def _overlap(train_digest: str, others_digest: str, train: tuple[str, ...], others: tuple[str, ...]) -> float:
    hits = inside_phrases(train, others)
    return sum(hits) / len(hits) if hits else 0.0


def normalise_text(text: str) -> str:
    """``text`` compared as a duplicate: case-folded, runs of whitespace as one space, no outer space."""
    return " ".join(text.casefold().split())


def duplicate_texts(train: Sequence[str], other: Sequence[str], examples: int = 2) -> tuple[int, list[str]]:
    """Rows of ``other`` whose text (``normalise_text``) is also a text of ``train``.

    Returns:
        ``(count, first_examples)``: how many rows of ``other``, and up to ``examples`` of their texts
        (as in ``other``, distinct, in row order).
    """
    seen = {normalise_text(t) for t in train}
    hits = [t for t in other if normalise_text(t) in seen]
    return len(hits), list(dict.fromkeys(hits))[:examples]
