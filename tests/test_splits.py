"""data/splits.py: SST-2's val split by source sentence, group splits, the overlap count, duplicate texts."""

import pytest

from lora_lightning.data.splits import duplicate_texts, group_split, phrase_groups, phrase_overlap


def sentence_phrases(sentence: str) -> list[str]:
    """Every run of words of ``sentence`` (SST-2's rows are the phrases of parse trees: a subset of these)."""
    w = sentence.split()
    return [" ".join(w[a:b]) for a in range(len(w)) for b in range(a + 1, len(w) + 1)]


SENTENCES = ["the film is a lovely mess", "a dull plot and poor acting", "the acting is superb",
             "very charming and very dull", "a film of great charm", "the plot is poor but the film is fine",
             "boring from start to end", "what a great cast", "the end is dull", "fine acting all round"]


@pytest.fixture(scope="module")
def phrases() -> list[str]:
    """A toy SST-2: every phrase of 10 sentences (shared pieces such as 'the film', 'dull', 'poor' among them),
    with a few exact duplicates, in a shuffled order, and trailing spaces as GLUE writes them."""
    import random

    rows = [p for s in SENTENCES for p in sentence_phrases(s)] + ["the film", "dull"]
    random.Random(0).shuffle(rows)
    return [r + " " for r in rows]


def test_sentences_and_shared_phrases_are_found(phrases):
    groups = phrase_groups(phrases)
    sentences = {p.strip() for p, g in zip(phrases, groups) if g is not None and
                 all(p.strip() not in q for q in phrases if q.strip() != p.strip())}
    assert sentences == set(SENTENCES)  # each sentence is its own group
    shared = {p.strip() for p, g in zip(phrases, groups) if g is None}
    assert {"the film", "dull", "poor", "the", "acting"} <= shared and "lovely mess" not in shared
    for p, g in zip(phrases, groups):  # a phrase in one sentence only is in that sentence's group
        owners = [s for s in SENTENCES if f" {p.strip()} " in f" {s} "]
        assert (g is None) == (len(owners) > 1)
    assert phrase_groups(phrases) == groups  # deterministic


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_val_phrase_inside_a_train_phrase(phrases, seed):
    """Whole sentences go to val with their own phrases; the independent count finds none of them in train;
    every row is on exactly one side; about val_fraction of the rows are in val."""
    groups = phrase_groups(phrases)
    train, val = group_split(groups, 0.3, seed)
    assert sorted(train + val) == list(range(len(phrases))) and not set(train) & set(val)
    assert all(groups[i] is not None for i in val)
    assert phrase_overlap([phrases[i] for i in train], [phrases[i] for i in val]) == 0.0
    assert len(val) >= 0.3 * len(phrases)
    assert group_split(groups, 0.3, seed) == (train, val)


def test_a_random_split_leaks_and_the_count_sees_it(phrases):
    """The seed's split of single rows puts most val phrases inside a train phrase of their own sentence."""
    import random

    rows = list(range(len(phrases)))
    random.Random(0).shuffle(rows)
    val, train = rows[: len(rows) // 10], rows[len(rows) // 10:]
    assert phrase_overlap([phrases[i] for i in train], [phrases[i] for i in val]) > 0.5


def test_phrase_overlap_counts_whole_words():
    assert phrase_overlap(["the film is good"], ["film is", "film is good", "good"]) == 1.0
    assert phrase_overlap(["the film is good"], ["ilm is", "is goo", "the movie"]) == 0.0


def test_group_split_keeps_groups_whole_and_one_in_train():
    groups = ["a", "a", "b", "b", "b", "c", None, "d"]
    for seed in range(5):
        train, val = group_split(groups, 0.99, seed)
        assert {groups[i] for i in val}.isdisjoint({groups[i] for i in train if groups[i] is not None})
        assert 6 in train and len({groups[i] for i in train} - {None}) == 1  # one group stays in train
    with pytest.raises(ValueError, match=r"1 distinct group\(s\): at least 2"):
        group_split(["a", "a", None], 0.5, 0)


def test_duplicate_texts_ignore_case_and_spacing():
    count, examples = duplicate_texts(["Great  film", "bad"], ["great film ", "GREAT FILM", "new", "Bad"])
    assert count == 3 and examples == ["great film ", "GREAT FILM"]
