import importlib.util
import os

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _load(name):
    import sys

    sys.path.insert(0, BENCHMARKS)
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(model, valid, test, features=None):
    metrics = {"hr@10": test, "hr@20": 2 * test, "ndcg@10": test / 2, "ndcg@20": test}
    return {
        "dataset": "amazon-beauty",
        "model": model,
        "objective": "all_positions",
        "features": features,
        "valid": {"ndcg@20": valid},
        "test": metrics,
        "epochs_run": 12,
        "best_epoch": 2,
        "wall_seconds": 99.6,
        "train_sequences_per_second": 1234.4,
        "machine": "cpu",
    }


def test_best_validation_run_is_shown_with_the_gap_to_the_best_paper():
    table = _load("results_table")
    records = [
        _record("sasrec", 0.060, 0.0500, []),
        _record("sasrec", 0.061, 0.0490, []),
        _record("difsr", 0.070, 0.0600, ["attributes"]),
        _record("bert4rec", 0.050, 0.0400, []),
    ]
    lines = table.format_results(records).splitlines()
    assert len(lines) == 5
    # Cloze backbones are shown with the task they train on, whatever the record's objective says.
    bert = next(line for line in lines if "| bert4rec |" in line)
    assert "| cloze |" in bert and "all_positions" not in bert
    # The higher-validation SASRec run wins although its test number is lower; SASRec sorts before DIF-SR.
    assert "| sasrec | ids only | as shipped |" in lines[2] and "| 0.0490 |" in lines[2]
    # Best published SASRec NDCG@20 is the ASIF paper's 0.0516.
    assert "0.1225 / 0.0516 (ASIF paper) | -0.0026 |" in lines[2]
    difsr = next(line for line in lines if "| difsr |" in line)
    assert lines.index(difsr) > 2
    assert "| difsr | attributes | as shipped |" in difsr
    assert "0.1284 / 0.0541 (DIF-SR paper) | +0.0059 |" in difsr
    assert "| 12 (2) | 100 | 1234 | cpu |" in difsr


def test_readme_block_is_replaced_and_missing_markers_fail():
    table = _load("results_table")
    text = f"intro\n{table.START}\nold\n{table.END}\noutro\n"
    assert table.replace_block(text, "new") == f"intro\n{table.START}\nnew\n{table.END}\noutro\n"
    with pytest.raises(ValueError, match="results-table"):
        table.replace_block("no markers", "new")


def test_every_published_row_has_the_four_metrics():
    published = _load("published")
    for key, sources in published.PUBLISHED.items():
        for source, row in sources.items():
            assert sorted(row) == ["hr@10", "hr@20", "ndcg@10", "ndcg@20"], (key, source)
            assert row["hr@20"] >= row["hr@10"] and row["ndcg@20"] >= row["ndcg@10"], (key, source)
    assert published.best_published("amazon-beauty", "comif") == (
        "COMIF paper",
        published.PUBLISHED[("amazon-beauty", "comif")]["COMIF paper"],
    )
    assert published.best_published("ml-100k", "sasrec") is None
