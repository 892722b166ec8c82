"""benchmarks/val_leak.py: which val phrases a train phrase already holds."""

from conftest import write_tsv
from benchmarks import val_leak


def test_val_phrases_inside_train_phrases_are_counted(tmp_path):
    """Sub-phrases of one sentence: with 40 rows that are pieces of 4 sentences and 10 that stand alone, the val phrases that
    occur verbatim inside some train phrase are counted one by one; dev's whole new sentence is not."""
    sentences = ["the film is good and lovely", "a dull and boring plot", "very charming acting", "the movie is poor"]
    rows = []
    for s in sentences:
        words = s.split()
        rows += [(" ".join(words[i:j]) + " ", int("good" in s or "charming" in s)) for i in range(len(words)) for j in range(i + 1, len(words) + 1)][:10]
    rows += [(f"standalone {chr(97 + k) * 3} row ", k % 2) for k in range(10)]  # inside no other row
    write_tsv(tmp_path / "train.tsv", "sentence\tlabel", rows)
    write_tsv(tmp_path / "dev.tsv", "sentence\tlabel", [("a superb film with great acting", 1)])
    split = val_leak.split_overlap(tmp_path, seed=0, val_fraction=0.25)
    train = [r[0].strip() for r in rows if r[0] not in split["val"]["sentence"]]
    expected = [any(f" {v.strip()} " in f" {t} " for t in train) for v in split["val"]["sentence"]]  # whole words
    assert split["seen"] == expected and 0 < sum(expected) < len(expected)
    assert split["dev_inside_train"] == 0.0
    by_sentence = val_leak.split_overlap(tmp_path, seed=0, val_fraction=0.25, val_split="by_sentence")
    assert len(by_sentence["seen"]) >= 0.25 * len(rows) and not any(by_sentence["seen"])
