"""Prints the results table (markdown) from benchmarks/results/results.jsonl, beside the published numbers.

Usage (from the project root):
    python benchmarks/results_table.py                  # print the table
    python benchmarks/results_table.py --readme README.md  # also rewrite the README's results block

For every dataset and model, the run with the best validation NDCG@20 is shown (model selection on the
validation split, as the papers do), with its test metrics, the side features it used, the objective, epochs,
wall time, training throughput and hardware, and the best published test NDCG@20 with the gap to it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from published import best_published  # noqa: E402

START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"
MODEL_ORDER = ("sasrec", "bert4rec", "sasrec_f", "fdsa", "nova", "nova_bert", "difsr", "asif", "comif")


def load_results(path: str) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def best_runs(records: list[dict]) -> dict[tuple[str, str], dict]:
    """(dataset, model) -> the record with the highest validation NDCG@20."""
    best: dict[tuple[str, str], dict] = {}
    for record in records:
        key = (record["dataset"], record["model"])
        if key not in best or record["valid"]["ndcg@20"] > best[key]["valid"]["ndcg@20"]:
            best[key] = record
    return best


def _order(key: tuple[str, str]) -> tuple:
    dataset, model = key
    rank = MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER)
    return dataset, rank, model


def _features(record: dict) -> str:
    features = record.get("features")
    if features is None:
        return "ids only" if record["model"] in ("sasrec", "bert4rec") else "?"
    return ", ".join(features) if features else "ids only"


def _changes(record: dict) -> str:
    """The run's overrides of its shipped config, run directory left out."""
    changes = {k.split(".", 1)[-1]: v for k, v in record.get("overrides", {}).items() if k != "training.run_dir"}
    return ", ".join(f"{k}={v}" for k, v in changes.items()) or "as shipped"


def _objective(record: dict) -> str:
    from tfsidefuse.models.registry import is_cloze

    # Records written before the trainer named it: Cloze backbones train on masked items.
    return "cloze" if is_cloze(record.get("model", "")) else record.get("objective", "?")


def format_results(records: list[dict]) -> str:
    header = (
        "| dataset | model | side features | config changes | objective | HR@10 | HR@20 | NDCG@10 | NDCG@20 | "
        "best published HR@20 / NDCG@20 | ΔNDCG@20 | epochs (best) | wall s | train seq/s | hardware |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for key, record in sorted(best_runs(records).items(), key=lambda item: _order(item[0])):
        dataset, model = key
        test = record["test"]
        published = best_published(dataset, model)
        if published is None:
            paper, delta = "–", "–"
        else:
            source, row = published
            paper = f"{row['hr@20']:.4f} / {row['ndcg@20']:.4f} ({source})"
            delta = f"{test['ndcg@20'] - row['ndcg@20']:+.4f}"
        hardware = record.get("machine", "?")
        if record.get("backend"):
            hardware += f", {record['backend']}"
        lines.append(
            f"| {dataset} | {model} | {_features(record)} | {_changes(record)} | {_objective(record)} | "
            f"{test['hr@10']:.4f} | {test['hr@20']:.4f} | {test['ndcg@10']:.4f} | {test['ndcg@20']:.4f} | "
            f"{paper} | {delta} | {record['epochs_run']} ({record['best_epoch']}) | {record['wall_seconds']:.0f} | "
            f"{record['train_sequences_per_second']:.0f} | {hardware} |"
        )
    return "\n".join(lines)


def replace_block(text: str, table: str) -> str:
    """`text` with the part between the results-table markers replaced by `table`."""
    if START not in text or END not in text:
        raise ValueError(f"no {START} ... {END} block to replace")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="benchmarks/results/results.jsonl")
    parser.add_argument("--readme", help="rewrite the results block of this markdown file")
    args = parser.parse_args(argv)
    table = format_results(load_results(args.results))
    print(table)
    if args.readme:
        with open(args.readme) as fh:
            text = fh.read()
        with open(args.readme, "w") as fh:
            fh.write(replace_block(text, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
