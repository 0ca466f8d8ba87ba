import json
import os

import numpy as np
import pytest

from tfsidefuse.analysis import analyze_runs
from tfsidefuse.analysis.cli import run_analyze
from tfsidefuse.analysis.examples import load_examples
from tfsidefuse.analysis.report import REPORT_FILE
from tfsidefuse.training.trainer import load_trained

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    with open(path, "rb") as fh:
        assert fh.read(8) == PNG_SIGNATURE, path
    assert os.path.getsize(path) > 1024, path


@pytest.fixture(scope="module")
def report(demo_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis_out")
    result = analyze_runs([demo_runs["sasrec"], demo_runs["sasrec_f"]], str(out), num_examples=2, rank_examples=16)
    return str(out), result


def test_every_figure_is_written(report):
    out, result = report
    pngs = [f for f in result["files"] if f.endswith(".png")]
    examples = result["datasets"]["demo"]["attention_examples"]
    expected = {f"attention_demo_example{i}.png" for i in examples} | {
        "attention_rank.png",
        "buckets_popularity_demo.png",
        "buckets_length_demo.png",
        "embeddings_pca.png",
        "training_curves.png",
        "comparison.png",
    }
    assert set(pngs) == expected and len(examples) == 2
    for name in pngs:
        assert_png(os.path.join(out, name))
    assert sorted(os.listdir(out)) == sorted(result["files"])


def test_json_holds_the_numbers(report, demo_runs):
    out, result = report
    with open(os.path.join(out, REPORT_FILE)) as fh:
        saved = json.load(fh)
    assert saved == json.loads(json.dumps(result))
    assert list(saved["runs"]) == ["sasrec", "sasrec_f"]
    examples = load_examples(demo_runs["data"], "test")
    first = saved["datasets"]["demo"]["attention_examples"][0]
    n = int(examples.lengths[first])
    for label, run in saved["runs"].items():
        # Attention maps: per layer [heads, n, n] over the real slots, causal rows summing to 1.
        maps = np.asarray(run["attention"]["examples"][str(first)])
        assert maps.shape == (2, 2, n, n), label
        np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-3)
        assert np.all(np.triu(maps, k=1) == 0)
        # Ranks: head width 4 bounds the score rank of one-source attention.
        assert [r["layer"] for r in run["rank"]] == [0, 1]
        for row in run["rank"]:
            assert row["sequences"] == 16 and row["head_dim"] == 4
            assert 0 < row["score_rank"] <= 4 and 0 < row["relative_score_rank"] <= 1
            assert row["probability_rank"] <= row["mean_length"]
        # Buckets: sizes add up to the split, and weighted metrics equal the run's test metrics.
        for grouping in ("popularity", "length"):
            rows = run["buckets"][grouping]
            assert sum(r["count"] for r in rows) == len(examples) == 200
            weighted = sum(r["ndcg@10"] * r["count"] for r in rows) / len(examples)
            assert weighted == pytest.approx(run["metrics"]["test"]["ndcg@10"], abs=1e-4)
        # Embeddings: the 60 real items, coloured by the first item feature.
        emb = run["embeddings"]
        assert emb["feature"] == "category" and len(emb["item_ids"]) == len(emb["coordinates"]) == 60
        assert emb["explained_variance_ratio"][0] >= emb["explained_variance_ratio"][1] > 0
        assert run["history"]["epoch"] == [1.0] and len(run["history"]["loss"]) == 1
    edges = saved["datasets"]["demo"]["popularity_edges"]
    assert edges == sorted(edges) and [r["low"] for r in saved["runs"]["sasrec"]["buckets"]["popularity"]] == edges
    assert [(r["run"], r["split"]) for r in saved["comparison"]] == [
        ("sasrec", "valid"),
        ("sasrec", "test"),
        ("sasrec_f", "valid"),
        ("sasrec_f", "test"),
    ]


def test_embedding_coordinates_are_the_pca_of_the_item_table(report, demo_runs):
    _, result = report
    table = np.asarray(load_trained(demo_runs["sasrec"]).backbone.item_table())[2:]
    coords = np.asarray(result["runs"]["sasrec"]["embeddings"]["coordinates"])
    centred = table - table.mean(axis=0)
    # Same pairwise geometry in the plane as projecting onto the top-2 right singular vectors.
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.abs(coords), np.abs(centred @ vt[:2].T), atol=1e-4)


def test_comparison_files(report):
    out, result = report
    with open(os.path.join(out, "comparison.json")) as fh:
        assert json.load(fh) == result["comparison"]
    with open(os.path.join(out, "comparison.md")) as fh:
        lines = fh.read().splitlines()
    assert lines[0].startswith("| run | split |") and len(lines) == 6
    test_hr = result["runs"]["sasrec_f"]["metrics"]["test"]["hr@10"]
    assert f"{test_hr:.4f}" in lines[5] and lines[5].startswith("| sasrec_f | test |")


def test_cli(demo_runs, tmp_path, capsys):
    from tfsidefuse.cli import build_parser

    parser = build_parser()  # the `tfsidefuse` command itself
    out = tmp_path / "cli"
    args = parser.parse_args(
        ["analyze", "--run", demo_runs["sasrec"], "--out", str(out), "--examples", "1", "--rank-examples", "4"]
        + ["--buckets", "2", "--split", "valid", "--prepared-dir", demo_runs["data"]]
    )
    assert args.fn is run_analyze
    assert args.fn(args) == 0
    printed = capsys.readouterr().out
    assert f"to {out}" in printed and "attention_rank.png" in printed
    with open(out / REPORT_FILE) as fh:
        saved = json.load(fh)
    assert saved["settings"]["split"] == "valid" and len(saved["datasets"]["demo"]["attention_examples"]) == 1
    assert len(saved["runs"]["sasrec"]["buckets"]["length"]) <= 2
    # A bad value is a user error: one message and exit code 2, as every command.
    assert run_analyze(parser.parse_args(["analyze", "--run", "x", "--out", "y", "--rank-examples", "0"])) == 2
    assert "tfsidefuse analyze: error: --rank-examples must be >= 1, got 0" in capsys.readouterr().err
    assert run_analyze(parser.parse_args(["analyze", "--run", str(tmp_path), "--out", str(out)])) == 2
    assert "tfsidefuse analyze: error: no config.yaml in" in capsys.readouterr().err


def test_bad_arguments(tmp_path, demo_runs):
    with pytest.raises(ValueError, match="non-empty list"):
        analyze_runs(demo_runs["sasrec"], str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        analyze_runs([str(tmp_path)], str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="prepared dataset of"):
        analyze_runs([demo_runs["sasrec"]], str(tmp_path / "out"), prepared_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown item feature 'colour'"):
        analyze_runs([demo_runs["sasrec"]], str(tmp_path / "out"), feature="colour", rank_examples=2)
