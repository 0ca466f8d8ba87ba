import numpy as np
import pandas as pd
import pytest

from tfsidefuse.data.ingest import encode
from tfsidefuse.data.prepared import PreparedDataset, write_prepared
from tfsidefuse.data.raw_dataset import RawDataset
from tfsidefuse.evaluation import evaluate_most_popular, format_table, item_popularity


@pytest.fixture
def prepared(tmp_path):
    # Item tokens: p (very popular), q, r, s. Users' last events are the test targets.
    seqs = {
        "u1": ["p", "p", "q", "p"],  # train p p   | valid q | test p
        "u2": ["p", "q", "r", "q"],  # train p q   | valid r | test q
        "u3": ["q", "p", "s", "s"],  # train q p   | valid s | test s
    }
    rows = [(u, i) for u, items in seqs.items() for i in items]
    raw = RawDataset("pop", pd.DataFrame(rows, columns=["user", "item"]))
    return PreparedDataset.open(write_prepared(encode(raw), tmp_path / "pop"))


def test_popularity_counts_training_events_only(prepared):
    vocab = prepared.vocabulary("item_id")
    counts = dict(zip(vocab, item_popularity(prepared)))
    # Training events: p p, p q, q p -> p: 4, q: 2, r: 0, s: 0.
    assert counts == {"[PAD]": 0, "[OOV]": 0, "p": 4, "q": 2, "r": 0, "s": 0}


def test_most_popular_metrics_by_hand(prepared):
    m = evaluate_most_popular(prepared, "test")
    # Ranking: p (4), q (2), then r and s tie at 0 and are broken by id: r (id 4) before s (id 5).
    # Test targets: p -> rank 1, q -> rank 2, s -> rank 4.
    ranks = np.array([1, 2, 4])
    assert m["hr@5"] == pytest.approx(1.0)
    assert m["mrr"] == pytest.approx(np.mean(1 / ranks))
    assert m["ndcg@5"] == pytest.approx(np.mean(1 / np.log2(ranks + 1)))
    # Valid targets: q -> 2, r -> 3, s -> 4.
    v = evaluate_most_popular(prepared, "valid")
    assert v["mrr"] == pytest.approx(np.mean([1 / 2, 1 / 3, 1 / 4]))


def test_format_table():
    text = format_table({"a": {"hr@10": 0.5, "mrr": 0.25}}, columns=("hr@10", "mrr", "hr@20"))
    lines = text.splitlines()
    assert lines[0].split() == ["hr@10", "mrr", "hr@20"]
    assert lines[2].split() == ["a", "0.5000", "0.2500", "-"]
