"""Prints the results tables (markdown) from benchmarks/results/results.jsonl, beside the published numbers.

Usage (from the project root):
    python benchmarks/results_table.py                  # print the tables
    python benchmarks/results_table.py --readme README.md  # also rewrite the README's results block
    python benchmarks/results_table.py --groups         # every tuned config, not only the selected one per model
    python benchmarks/results_table.py --claims         # do the papers' orderings of two models hold here?

Runs are grouped by tuned config: a group is one (dataset, model, resolved config with ``training.seed`` and
``training.run_dir`` left out), so the seeds of one config form one group (a seed run twice keeps its later run).
Records written before runs stored their resolved config and seed are single-run groups. For every dataset and
model the group with the best mean validation NDCG@20 among those with the most seeds (counting up to three) is shown
(model selection on the validation split only), with
the mean ± sample standard deviation over its seeds of the test metrics, the number of seeds and the seeds, the best
published HR@20 / NDCG@20 and the gap of the mean to it, and the paired test against SASRec on the same dataset
(and against DIF-SR for ASIF and COMIF).

The paired test (``paired.compare_groups``) takes each user's test NDCG@20 averaged over the group's seeds and over
the reference group's same seeds and runs a two-sided paired t-test over the users; the cell reads
``p (mean difference)``. The reference group is the baseline model's group with the best mean validation NDCG@20
among those that have ranks files for every seed of the compared group (and the same dataset fingerprint); "–"
when there is none, when the compared group lacks ranks files, or for the reference group itself.

``--claims`` takes every two selected models that one paper reports on the same dataset, orients the pair by the
papers (the model they put ahead first), and sets the papers' NDCG@20 differences beside ours (the paired test over
the seeds both groups ran): the ordering holds, is reversed, or is not significant at p < 0.05.

One markdown table per dataset: Amazon Beauty, Amazon Sports, then the others by name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from paired import compare_groups  # noqa: E402
from published import PUBLISHED, best_published  # noqa: E402

from tfsidefuse.config import ConfigError, RunConfig  # noqa: E402

START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"
MODEL_ORDER = ("sasrec", "bert4rec", "sasrec_f", "fdsa", "nova", "nova_bert", "difsr", "asif", "comif")
DATASET_ORDER = ("amazon-beauty", "amazon-sports")
DATASET_NAMES = {"amazon-beauty": "Amazon Beauty", "amazon-sports": "Amazon Sports"}
BASELINE = "sasrec"
SECOND_BASELINE = "difsr"
"""ASIF and COMIF are also tested against DIF-SR, the attribute-fusion model they improve on."""
AGAINST_SECOND_BASELINE = ("asif", "comif")
RUN_SPECIFIC = (("training", "seed"), ("training", "run_dir"))
"""Resolved-config entries that differ between the runs of one tuned config."""
NONE = "–"


def load_results(path: str) -> list[dict]:
    """The records of a results file, one JSON object a line."""
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def is_seeded(record: dict) -> bool:
    """Whether a record carries its resolved config and seed (records written since runs store them)."""
    return isinstance(record.get("resolved_config"), dict) and record.get("seed") is not None


def normalized_config(resolved: dict) -> dict:
    """A stored resolved config as this version resolves it: keys added since it was written get their defaults.

    A config written before a training option existed then groups with the same config written after, where the
    option is stored with its default value. A config this version no longer accepts is kept as stored.
    """
    stored = json.loads(json.dumps(resolved))  # a deep copy: resolving must not touch the record
    try:
        return RunConfig.from_dict(stored, validate=False).to_dict()
    except ConfigError:
        return stored


def config_key(record: dict) -> str:
    """The record's resolved config without its run-specific entries, as canonical JSON (the group identity)."""
    config = normalized_config(record["resolved_config"])
    for section, key in RUN_SPECIFIC:
        if isinstance(config.get(section), dict):
            config[section].pop(key, None)
    return json.dumps(config, sort_keys=True)


class Group:
    """The runs of one tuned config of a model on a dataset, at most one per seed, in results-file order."""

    def __init__(self, dataset: str, model: str, key: str, runs: list[dict] | None = None):
        self.dataset = dataset
        self.model = model
        self.key = key
        self.runs: list[dict] = list(runs or [])

    def __repr__(self) -> str:
        return f"Group({self.dataset!r}, {self.model!r}, seeds={self.seeds!r})"

    @property
    def seeds(self) -> list:
        """The seeds of the runs (``None`` for a record without one)."""
        return [run.get("seed") for run in self.runs]

    def values(self, split: str, metric: str) -> np.ndarray:
        return np.array([run[split][metric] for run in self.runs], dtype=np.float64)

    def mean(self, split: str, metric: str) -> float:
        return float(self.values(split, metric).mean())

    def std(self, split: str, metric: str) -> float | None:
        """Sample standard deviation (ddof = 1) over the seeds; ``None`` for a single run."""
        values = self.values(split, metric)
        return float(values.std(ddof=1)) if values.size >= 2 else None

    def ranked_seeds(self, results_dir: str | None) -> set:
        """The seeds whose run has a ranks file under ``results_dir``."""
        if results_dir is None:
            return set()
        return {
            run["seed"]
            for run in self.runs
            if run.get("seed") is not None
            and run.get("ranks_file")
            and os.path.exists(os.path.join(results_dir, run["ranks_file"]))
        }

    @property
    def fingerprints(self) -> set:
        return {run["dataset_fingerprint"] for run in self.runs if run.get("dataset_fingerprint")}

    def same_data(self, other: Group) -> bool:
        """False only when both groups record their dataset fingerprints and these differ."""
        return not self.fingerprints or not other.fingerprints or self.fingerprints == other.fingerprints


def group_runs(records: list[dict]) -> list[Group]:
    """The records grouped by (dataset, model, tuned config); each unseeded record is a group of its own.

    Within a group a repeated seed keeps its later run (a rerun supersedes the earlier one, in its place).
    """
    groups: dict[tuple, Group] = {}
    for index, record in enumerate(records):
        dataset, model = record["dataset"], record["model"]
        key = config_key(record) if is_seeded(record) else f"record {index}"
        group = groups.setdefault((dataset, model, key), Group(dataset, model, key))
        same_seed = [i for i, run in enumerate(group.runs) if is_seeded(record) and run.get("seed") == record["seed"]]
        if same_seed:
            group.runs[same_seed[0]] = record
        else:
            group.runs.append(record)
    return list(groups.values())


#: Seeds of a complete row (the mean ± std the tables report).
SEEDS_FOR_A_ROW = 3


def _selection_key(group: Group) -> tuple[int, float]:
    """Seeds first (up to the three a reported row needs), then the mean validation NDCG@20: a config is not
    selected on one lucky seed over a config measured on three."""
    return min(len(group.runs), SEEDS_FOR_A_ROW), group.mean("valid", "ndcg@20")


def best_groups(groups: list[Group]) -> dict[tuple[str, str], Group]:
    """(dataset, model) -> the selected group: among the groups with the most seeds (counting up to three), the one
    with the highest mean validation NDCG@20 (the first on a tie)."""
    best: dict[tuple[str, str], Group] = {}
    for group in groups:
        key = (group.dataset, group.model)
        if key not in best or _selection_key(group) > _selection_key(best[key]):
            best[key] = group
    return best


def reference_group(group: Group, baseline: str, groups: list[Group], results_dir: str | None) -> Group | None:
    """The `baseline` model's group to test `group` against, or ``None``.

    Among the baseline's groups on the same dataset that have ranks files for every seed of `group` (and, where both
    record it, the same dataset fingerprint), the one with the best mean validation NDCG@20. ``None`` when `group`
    itself lacks a ranks file for one of its runs, or when no baseline group qualifies.
    """
    seeds = set(group.seeds)
    if None in seeds or group.ranked_seeds(results_dir) != seeds:
        return None
    candidates = [
        other
        for other in groups
        if other.dataset == group.dataset
        and other.model == baseline
        and seeds <= other.ranked_seeds(results_dir)
        and group.same_data(other)
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda other: other.mean("valid", "ndcg@20"))


def paired_against(group: Group, baseline: str, groups: list[Group], results_dir: str | None) -> dict | None:
    """``paired.compare_groups`` of `group` against its reference group of `baseline` (``None`` if none)."""
    reference = reference_group(group, baseline, groups, results_dir)
    if reference is None or reference is group:
        return None
    return compare_groups(results_dir, group.runs, reference.runs)


SIGNIFICANCE = 0.05
"""Level of the paired test below which ``--claims`` calls a difference established (two-sided, per pair)."""


def paired_groups(group: Group, other: Group, results_dir: str | None) -> dict | None:
    """``paired.compare_groups`` of two groups over the seeds both ran with ranks files, or ``None``.

    ``None`` when they share no ranked seed or were trained on differently fingerprinted data.
    """
    common = group.ranked_seeds(results_dir) & other.ranked_seeds(results_dir)
    if not common or not group.same_data(other):
        return None
    runs_a = [run for run in group.runs if run.get("seed") in common]
    runs_b = [run for run in other.runs if run.get("seed") in common]
    return compare_groups(results_dir, runs_a, runs_b)


def published_differences(dataset: str, model_a: str, model_b: str, metric: str = "ndcg@20") -> dict[str, float]:
    """``{source: value of a - value of b}`` over the papers that report both models on `dataset`, by source name."""
    rows_a, rows_b = PUBLISHED.get((dataset, model_a), {}), PUBLISHED.get((dataset, model_b), {})
    return {source: rows_a[source][metric] - rows_b[source][metric] for source in sorted(rows_a) if source in rows_b}


def claim_verdict(published: dict[str, float], result: dict | None, a: str = "a", b: str = "b") -> str:
    """Whether our paired result agrees with the papers' sign of ``a - b`` (``published`` as from
    :func:`published_differences`, oriented so that the papers put ``a`` ahead).

    ``holds``: ours is positive at p < :data:`SIGNIFICANCE`; ``reversed``: negative at that level; ``not
    significant``: p at or above it; ``papers disagree``: the papers' signs differ (the model ahead here, `a` or
    `b`, is then named); ``–``: no paired result.
    """
    if result is None:
        return NONE
    significant = result["p_value"] < SIGNIFICANCE
    if min(published.values()) < 0 < max(published.values()):
        if not significant:
            return "papers disagree; no significant difference here"
        return f"papers disagree; {a if result['mean_diff'] > 0 else b} ahead here"
    if not significant:
        return "not significant"
    return "holds" if result["mean_diff"] > 0 else "reversed"


def format_claims(records: list[dict], results_dir: str | None) -> str:
    """One markdown table per dataset: every pair of models that a paper reports on it, the papers' NDCG@20
    difference, ours (the selected groups, over the seeds both ran) with its paired p-value, and the verdict.

    Each pair is oriented so that the papers' mean difference is not negative (``a`` is the model they put ahead).
    """
    best = best_groups(group_runs(records))
    blocks = []
    for dataset in sorted({dataset for dataset, _ in best}, key=_dataset_order):
        groups = sorted((group for (d, _), group in best.items() if d == dataset), key=_order)
        rows = []
        for i, first in enumerate(groups):
            for second in groups[i + 1 :]:
                differences = published_differences(dataset, first.model, second.model)
                if not differences:
                    continue
                a, b = (first, second) if np.mean(list(differences.values())) >= 0 else (second, first)
                if a is second:
                    differences = {source: -value for source, value in differences.items()}
                result = paired_groups(a, b, results_dir)
                papers = ", ".join(f"{source} {value:+.4f}" for source, value in differences.items())
                ours = p_value = NONE
                if result is not None:
                    ours = f"{result['mean_diff']:+.4f} ({', '.join(str(seed) for seed in result['seeds'])})"
                    p_value = _p_text(result["p_value"])
                verdict = claim_verdict(differences, result, a.model, b.model)
                rows.append(f"| {a.model} > {b.model} | {papers} | {ours} | {p_value} | {verdict} |")
        if not rows:
            continue
        title = DATASET_NAMES.get(dataset, dataset)
        header = [
            f"**{title}** (`{dataset}`)",
            "",
            "| claim (a > b) | published NDCG@20 a − b | ours: test NDCG@20 a − b (seeds) | paired p | verdict |",
            "|---|---|---|---|---|",
        ]
        blocks.append("\n".join(header + rows))
    return "\n\n".join(blocks)


def _order(group: Group) -> tuple:
    rank = MODEL_ORDER.index(group.model) if group.model in MODEL_ORDER else len(MODEL_ORDER)
    return rank, group.model, -group.mean("valid", "ndcg@20")


def _dataset_order(dataset: str) -> tuple:
    return (DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER)), dataset


def _features(record: dict) -> str:
    features = record.get("features")
    if features is None:
        return "ids only" if record["model"] in ("sasrec", "bert4rec") else "?"
    return ", ".join(features) if features else "ids only"


def _changes(record: dict) -> str:
    """The run's overrides of its shipped config, run directory and seed left out."""
    changes = {
        k.split(".", 1)[-1]: v
        for k, v in record.get("overrides", {}).items()
        if k not in ("training.run_dir", "training.seed")
    }
    text = ", ".join(f"{k}={v}" for k, v in changes.items())
    config = record.get("config", "")
    if config.startswith("benchmarks/configs/"):  # a benchmark config: name it, its overrides after it
        return f"`{os.path.basename(config)}`" + (f", {text}" if text else "")
    return text or "as shipped"


def _objective(record: dict) -> str:
    from tfsidefuse.models.registry import is_cloze

    # Records written before the trainer named it: Cloze backbones train on masked items.
    return "cloze" if is_cloze(record.get("model", "")) else record.get("objective", "?")


def _hardware(record: dict) -> str:
    if record.get("hardware"):
        return record["hardware"]
    hardware = record.get("machine", "?")
    if record.get("backend"):
        hardware += f", {record['backend']}"
    return hardware


def _seeds(group: Group) -> str:
    """``n (seed, ...)``; an unseeded record shows the seed its overrides set, if any."""
    seeds = group.seeds
    if seeds == [None]:
        seed = group.runs[0].get("overrides", {}).get("training.seed")
        return "1" if seed is None else f"1 ({seed})"
    return f"{len(seeds)} ({', '.join(str(seed) for seed in seeds)})"


def _mean_std(group: Group, split: str, metric: str) -> str:
    std = group.std(split, metric)
    return f"{group.mean(split, metric):.4f} ± {NONE if std is None else f'{std:.4f}'}"


def _epochs(group: Group) -> str:
    """``epochs run (best epoch)`` of each seed, joined by ``/``."""
    runs = "/".join(str(run["epochs_run"]) for run in group.runs)
    best = "/".join(str(run["best_epoch"]) for run in group.runs)
    return f"{runs} ({best})"


def _p_text(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _p_value(result: dict | None) -> str:
    if result is None:
        return NONE
    return f"{_p_text(result['p_value'])} ({result['mean_diff']:+.4f})"


def _row(group: Group, groups: list[Group], results_dir: str | None, selected: bool | None) -> str:
    first = group.runs[0]
    published = best_published(group.dataset, group.model)
    hr20, ndcg20 = group.mean("test", "hr@20"), group.mean("test", "ndcg@20")
    if published is None:
        paper = delta_hr = delta_ndcg = NONE
    else:
        source, row = published
        paper = f"{row['hr@20']:.4f} / {row['ndcg@20']:.4f} ({source})"
        delta_hr, delta_ndcg = f"{hr20 - row['hr@20']:+.4f}", f"{ndcg20 - row['ndcg@20']:+.4f}"
    vs_baseline = _p_value(paired_against(group, BASELINE, groups, results_dir))
    vs_second = NONE
    if group.model in AGAINST_SECOND_BASELINE:
        vs_second = _p_value(paired_against(group, SECOND_BASELINE, groups, results_dir))
    hardware = "; ".join(dict.fromkeys(_hardware(run) for run in group.runs))
    cells = [group.model, _features(first), _changes(first), _objective(first), _seeds(group)]
    if selected is not None:
        cells += [_mean_std(group, "valid", "ndcg@20"), "✓" if selected else ""]
    cells += [_mean_std(group, "test", metric) for metric in ("hr@10", "hr@20", "ndcg@10", "ndcg@20")]
    cells += [paper, delta_hr, delta_ndcg, vs_baseline, vs_second, _epochs(group)]
    cells += [f"{np.mean([run['wall_seconds'] for run in group.runs]):.0f}", hardware]
    return "| " + " | ".join(cells) + " |"


def _header(all_groups: bool) -> str:
    columns = ["model", "side features", "config changes", "objective", "seeds"]
    if all_groups:
        columns += ["valid NDCG@20 (mean ± std)", "selected"]
    columns += [f"test {metric} (mean ± std)" for metric in ("HR@10", "HR@20", "NDCG@10", "NDCG@20")]
    columns += [
        "best published HR@20 / NDCG@20",
        "Δ HR@20",
        "Δ NDCG@20",
        "p vs SASRec (NDCG@20 diff)",
        "p vs DIF-SR (NDCG@20 diff)",
        "epochs (best)",
        "wall s (mean)",
        "hardware",
    ]
    return "| " + " | ".join(columns) + " |\n" + "|" + "---|" * len(columns)


def format_results(records: list[dict], results_dir: str | None = None, *, all_groups: bool = False) -> str:
    """One markdown table per dataset: the selected group of every model, or with `all_groups` every group.

    Args:
        results_dir: the directory the records' ranks files are relative to; ``None`` leaves the p-values out.
        all_groups: show every group, with its mean validation NDCG@20 and whether it is the selected one.
    """
    groups = group_runs(records)
    best = best_groups(groups)
    shown = groups if all_groups else list(best.values())
    blocks = []
    for dataset in sorted({group.dataset for group in shown}, key=_dataset_order):
        rows = sorted((group for group in shown if group.dataset == dataset), key=_order)
        title = DATASET_NAMES.get(dataset, dataset)
        lines = [f"**{title}** (`{dataset}`)", "", _header(all_groups)]
        for group in rows:
            selected = (best[(group.dataset, group.model)] is group) if all_groups else None
            lines.append(_row(group, groups, results_dir, selected))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def replace_block(text: str, table: str) -> str:
    """`text` with the part between the results-table markers replaced by `table`."""
    if START not in text or END not in text:
        raise ValueError(f"no {START} ... {END} block to replace")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def format_curves(records: list[dict], metric: str = "val_ndcg@20") -> str:
    """One markdown row per run that recorded its per-epoch curves: the metric after every epoch."""
    runs = [r for r in records if metric in (r.get("curves") or {})]
    if not runs:
        return f"(no run recorded {metric} per epoch)"
    width = max(len(r["curves"][metric]) for r in runs)
    lines = [
        f"| run | objective | {' | '.join(str(e + 1) for e in range(width))} |",
        "|---|---|" + "---|" * width,
    ]
    for record in runs:
        values = [f"{v:.4f}" for v in record["curves"][metric]] + [""] * (width - len(record["curves"][metric]))
        lines.append(f"| {record['run_id']} | {record.get('objective', '?')} | {' | '.join(values)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="benchmarks/results/results.jsonl")
    parser.add_argument("--readme", help="rewrite the results block of this markdown file with the printed tables")
    parser.add_argument("--groups", action="store_true", help="show every tuned config, not only the selected one")
    parser.add_argument("--curves", metavar="METRIC", help="print the per-epoch curve of METRIC (e.g. val_ndcg@20)")
    parser.add_argument(
        "--claims", action="store_true", help="print whether the papers' orderings of two models hold here"
    )
    args = parser.parse_args(argv)
    if args.curves:
        print(format_curves(load_results(args.results), args.curves))
        return 0
    results_dir = os.path.dirname(os.path.abspath(args.results))
    if args.claims:
        print(format_claims(load_results(args.results), results_dir))
        return 0
    table = format_results(load_results(args.results), results_dir, all_groups=args.groups)
    print(table)
    if args.readme:
        with open(args.readme) as fh:
            text = fh.read()
        with open(args.readme, "w") as fh:
            fh.write(replace_block(text, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
