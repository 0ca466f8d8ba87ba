"""All analyses of trained runs in one call: PNG figures plus ``analysis.json`` with their numbers.

Per run directory (as written by ``tfsidefuse train``: ``model.keras``,
``config.yaml``, ``history.csv``, ``metrics.json``):

* attention heatmaps per layer and head of a few sampled evaluation
  sequences, runs side by side (``attention_<dataset>_example<i>.png``);
* the mean numerical rank of the attention matrices per layer over more
  sampled sequences (``attention_rank.png``; see :mod:`.rank`);
* HR@K / NDCG@K per target-popularity and per sequence-length bucket
  (``buckets_popularity_<dataset>.png``, ``buckets_length_<dataset>.png``;
  see :mod:`.buckets`);
* a PCA of the item embeddings coloured by an item attribute
  (``embeddings_pca.png``; see :mod:`.embeddings`);
* training curves (``training_curves.png``) and a comparison of the runs'
  metrics (``comparison.md``, ``comparison.json``, ``comparison.png``).

Runs trained on the same prepared dataset share the sampled sequences and the
bucket boundaries, so their numbers compare directly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence

import keras
import numpy as np
import yaml

from tfsidefuse.analysis import plots
from tfsidefuse.analysis.attention import attention_probabilities, transformer_blocks
from tfsidefuse.analysis.buckets import evaluate_buckets, quantile_edges
from tfsidefuse.analysis.curves import HISTORY_FILE, comparison_rows, markdown_table, read_history
from tfsidefuse.analysis.embeddings import item_attribute, project_items
from tfsidefuse.analysis.examples import EvalExamples, load_examples
from tfsidefuse.analysis.rank import DEFAULT_RTOL, attention_rank
from tfsidefuse.data.pipeline import ITEM_IDS
from tfsidefuse.data.prepared import PreparedDataset
from tfsidefuse.evaluation import METRIC_ORDER, item_popularity
from tfsidefuse.training.trainer import METRICS_FILE, load_trained

logger = logging.getLogger(__name__)

REPORT_FILE = "analysis.json"


@dataclasses.dataclass
class LoadedRun:
    """A trained run, ready for analysis."""

    run_dir: str
    label: str
    model: keras.Model
    prepared: PreparedDataset
    config: dict
    metrics: dict | None


def load_run(run_dir: str, prepared_dir: str | None = None) -> LoadedRun:
    """Loads a run's model, config, metrics and prepared dataset.

    Args:
        run_dir: the run directory.
        prepared_dir: the prepared dataset, if not the one named in the run's
            ``config.yaml`` (e.g. when that path was relative to another directory).
    """
    config_path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"no config.yaml in {run_dir}; is it a run directory written by `tfsidefuse train`?")
    with open(config_path) as fh:
        config = yaml.safe_load(fh) or {}
    prepared_dir = prepared_dir or (config.get("dataset") or {}).get("prepared_dir")
    if not prepared_dir or not os.path.exists(os.path.join(prepared_dir, "schema.yaml")):
        raise FileNotFoundError(
            f"prepared dataset of {run_dir} not found: {prepared_dir!r} (relative paths are read from the "
            f"current directory {os.getcwd()}); pass prepared_dir / --prepared-dir"
        )
    metrics = None
    if os.path.exists(os.path.join(run_dir, METRICS_FILE)):
        with open(os.path.join(run_dir, METRICS_FILE)) as fh:
            metrics = json.load(fh)
    prepared = PreparedDataset.open(prepared_dir)
    model = load_trained(run_dir, prepared)
    label = (config.get("model") or {}).get("name") or os.path.basename(os.path.normpath(run_dir))
    return LoadedRun(run_dir, label, model, prepared, config, metrics)


def _unique_labels(runs: list[LoadedRun]) -> None:
    names = [r.label for r in runs]
    for run in runs:
        if names.count(run.label) > 1:
            run.label = f"{run.label} ({os.path.basename(os.path.normpath(run.run_dir))})"
    labels = [r.label for r in runs]
    for i, run in enumerate(runs):
        if labels.count(run.label) > 1:
            run.label = f"{run.label} #{i + 1}"


def _rounded(x, digits: int = 5):
    return np.round(np.asarray(x, dtype=np.float64), digits).tolist()


def _head_dim(block) -> int:
    attention = block.self_attention
    return int(getattr(attention, "head_dim", block.hidden_dim // block.num_heads))


@dataclasses.dataclass
class _DatasetContext:
    name: str
    examples: EvalExamples
    heatmap_indices: np.ndarray
    rank_indices: np.ndarray
    groupings: dict


def _dataset_context(
    prepared: PreparedDataset, split: str, num_examples: int, rank_examples: int, num_buckets: int, seed: int
) -> _DatasetContext:
    examples = load_examples(prepared, split)
    popularity = item_popularity(prepared)
    target_popularity = popularity[examples.labels].astype(np.int64)
    lengths = examples.lengths
    groupings = {
        "popularity": (target_popularity, quantile_edges(target_popularity, num_buckets)),
        "length": (lengths, quantile_edges(lengths, num_buckets)),
    }
    return _DatasetContext(
        name=prepared.schema.name,
        examples=examples,
        heatmap_indices=examples.sample(num_examples, seed=seed, min_length=min(5, int(lengths.max()))),
        rank_indices=examples.sample(rank_examples, seed=seed + 1, min_length=2),
        groupings=groupings,
    )


def _attribute_names(prepared: PreparedDataset, feature: str) -> list[str] | None:
    try:
        return prepared.vocabulary(feature)
    except KeyError:
        return None


def _analyze_run(run: LoadedRun, ctx: _DatasetContext, *, feature, rtol, ks, batch_size) -> dict:
    backbone = run.model.backbone
    examples = ctx.examples
    result: dict = {
        "run_dir": os.path.abspath(run.run_dir),
        "dataset": ctx.name,
        "prepared_dir": os.path.abspath(run.prepared.directory),
    }

    # Attention heatmaps: the real slots of each sampled sequence.
    capture = attention_probabilities(backbone, examples.take(ctx.heatmap_indices))
    real = examples.take(ctx.heatmap_indices)[ITEM_IDS] != 0
    maps = {
        int(idx): [p[i][:, real[i]][:, :, real[i]] for p in capture.latest()]
        for i, idx in enumerate(ctx.heatmap_indices)
    }
    result["attention"] = {
        "layers": capture.layer_names,
        "skipped": capture.skipped,
        "examples": {idx: [_rounded(m, 4) for m in layers] for idx, layers in maps.items()},
    }

    # Rank: the masked and the unmasked probabilities of more sequences.
    inputs = examples.take(ctx.rank_indices)
    capture = attention_probabilities(backbone, inputs, unmasked=True)
    blocks = [b for b in transformer_blocks(backbone) if f"{b.name}/{b.self_attention.name}" in capture.layer_names]
    result["rank"] = attention_rank(
        capture.latest(),
        capture.latest(masked=False),
        inputs[ITEM_IDS] != 0,
        rtol=rtol,
        head_dims=[_head_dim(b) for b in blocks],
    )

    # Metrics per bucket.
    result["buckets"] = evaluate_buckets(
        run.model, examples.inputs, examples.labels, ctx.groupings, ks=ks, batch_size=batch_size
    )

    # Item-embedding projection coloured by an item attribute.
    table = keras.ops.convert_to_numpy(backbone.item_table())
    tables = run.prepared.item_feature_tables
    name = feature or next((f.name for f in run.prepared.schema.item_features if f.name in tables), None)
    attribute = None if name is None else item_attribute(tables[name])
    projection = project_items(table, attribute)
    if attribute is not None:
        vocab = _attribute_names(run.prepared, name)
        if vocab:
            projection["names"] = {int(v): vocab[v] for v in np.unique(projection["attribute"]) if v < len(vocab)}
    projection["feature"] = name
    result["embeddings"] = projection

    history_path = os.path.join(run.run_dir, HISTORY_FILE)
    result["history"] = read_history(history_path) if os.path.exists(history_path) else None
    result["metrics"] = run.metrics
    return result


def _json_embeddings(projection: dict) -> dict:
    return {
        "feature": projection["feature"],
        "explained_variance_ratio": _rounded(projection["explained_variance_ratio"], 6),
        "item_ids": projection["item_ids"].tolist(),
        "coordinates": _rounded(projection["coordinates"], 5),
        "attribute": None if projection["attribute"] is None else projection["attribute"].tolist(),
        "attribute_names": {str(k): v for k, v in projection.get("names", {}).items()},
    }


def analyze_runs(
    run_dirs: Sequence[str],
    out_dir: str,
    *,
    split: str = "test",
    num_examples: int = 3,
    rank_examples: int = 64,
    num_buckets: int = 5,
    k: int = 10,
    feature: str | None = None,
    rtol: float = DEFAULT_RTOL,
    seed: int = 0,
    batch_size: int = 256,
    prepared_dir: str | None = None,
) -> dict:
    """Writes the figures and ``analysis.json`` of one or more trained runs.

    Args:
        run_dirs: run directories written by ``tfsidefuse train``.
        out_dir: where the PNG, markdown and JSON files go (created if needed).
        split: the evaluation split analysed (``"valid"`` or ``"test"``).
        num_examples: sequences drawn as attention heatmaps (at least 5 items when possible).
        rank_examples: sequences over which attention ranks are averaged.
        num_buckets: popularity and length buckets (quantiles of the examples; fewer on ties).
        k: the cutoff of HR@K and NDCG@K drawn per bucket (the JSON has K = 5, 10, 20 and MRR).
        feature: item feature that colours the embedding projection (default:
            the dataset's first item feature; none if it has none).
        rtol: relative singular-value threshold of the rank (see :mod:`.rank`).
        seed: seed of the sampled sequences.
        batch_size: examples per model call in the bucket evaluation.
        prepared_dir: the prepared dataset of every run, instead of the one in
            each run's ``config.yaml``.

    Returns:
        What ``analysis.json`` holds: ``settings``, ``datasets`` (sampled
        examples, bucket edges), ``runs`` (label -> attention, rank, buckets,
        embeddings, history, metrics), ``comparison`` and ``files`` (the
        files written, relative to ``out_dir``).
    """
    if isinstance(run_dirs, str) or not run_dirs:
        raise ValueError(f"run_dirs must be a non-empty list of run directories, got {run_dirs!r}")
    ks = tuple(sorted({5, 10, 20, k}))
    runs = [load_run(d, prepared_dir) for d in run_dirs]
    for run in runs:
        tables = run.prepared.item_feature_tables
        if feature is not None and feature not in tables:
            raise ValueError(f"unknown item feature {feature!r} for {run.run_dir}; the dataset has {sorted(tables)}")
    _unique_labels(runs)
    os.makedirs(out_dir, exist_ok=True)

    contexts: dict[str, _DatasetContext] = {}
    analyses: dict[str, dict] = {}
    for run in runs:
        key = os.path.abspath(run.prepared.directory)
        if key not in contexts:
            contexts[key] = _dataset_context(run.prepared, split, num_examples, rank_examples, num_buckets, seed)
        logger.info("analysing %s", run.label)
        analyses[run.label] = _analyze_run(run, contexts[key], feature=feature, rtol=rtol, ks=ks, batch_size=batch_size)

    files = []

    def written(path: str) -> None:
        files.append(os.path.relpath(path, out_dir))

    several = len({ctx.name for ctx in contexts.values()}) < len(contexts)
    for n, (key, ctx) in enumerate(contexts.items()):
        tag = f"{ctx.name}{n}" if several else ctx.name
        members = {label: a for label, a in analyses.items() if a["prepared_dir"] == key}
        for idx in ctx.heatmap_indices:
            maps = {
                label: [np.asarray(m) for m in a["attention"]["examples"][int(idx)]] for label, a in members.items()
            }
            length = int(ctx.examples.lengths[idx])
            title = f"{ctx.name} {split} example {idx} ({length} items, target item id {ctx.examples.labels[idx]})"
            written(plots.plot_attention_maps(maps, title, os.path.join(out_dir, f"attention_{tag}_example{idx}.png")))
        for grouping, what in (("popularity", "target-item training frequency"), ("length", "input length")):
            buckets = {label: a["buckets"][grouping] for label, a in members.items()}
            path = os.path.join(out_dir, f"buckets_{grouping}_{tag}.png")
            title = f"{ctx.name} {split}: metrics by {what} bucket"
            written(plots.plot_buckets(buckets, (f"hr@{k}", f"ndcg@{k}"), title, path))

    written(
        plots.plot_rank(
            {label: a["rank"] for label, a in analyses.items()}, os.path.join(out_dir, "attention_rank.png")
        )
    )
    written(
        plots.plot_projections(
            {label: a["embeddings"] for label, a in analyses.items()},
            feature or next((a["embeddings"]["feature"] for a in analyses.values()), None),
            os.path.join(out_dir, "embeddings_pca.png"),
        )
    )
    histories = {label: a["history"] for label, a in analyses.items() if a["history"]}
    if histories:
        written(plots.plot_curves(histories, os.path.join(out_dir, "training_curves.png")))

    rows = comparison_rows({label: a["metrics"] for label, a in analyses.items() if a["metrics"]})
    with open(os.path.join(out_dir, "comparison.md"), "w") as fh:
        fh.write(markdown_table(rows))
    written(os.path.join(out_dir, "comparison.md"))
    with open(os.path.join(out_dir, "comparison.json"), "w") as fh:
        json.dump(rows, fh, indent=2)
    written(os.path.join(out_dir, "comparison.json"))
    if rows:
        shown = [m for m in METRIC_ORDER if m != "mrr"]
        comparison_split = split if any(r["split"] == split for r in rows) else rows[0]["split"]
        written(plots.plot_comparison(rows, shown, comparison_split, os.path.join(out_dir, "comparison.png")))

    report = {
        "settings": {
            "split": split,
            "num_examples": num_examples,
            "rank_examples": rank_examples,
            "num_buckets": num_buckets,
            "k": k,
            "rtol": rtol,
            "rank_definition": "count of singular values > rtol * largest, over the real slots; score_rank on "
            "row-centred log-probabilities without mask (full = n - 1), probability_rank on the masked "
            "probabilities (full = n)",
            "seed": seed,
        },
        "datasets": {
            (f"{ctx.name}{n}" if several else ctx.name): {
                "prepared_dir": key,
                "examples": len(ctx.examples),
                "attention_examples": ctx.heatmap_indices.tolist(),
                "rank_examples": ctx.rank_indices.tolist(),
                "popularity_edges": list(ctx.groupings["popularity"][1]),
                "length_edges": list(ctx.groupings["length"][1]),
            }
            for n, (key, ctx) in enumerate(contexts.items())
        },
        "runs": {
            label: {
                **{k_: v for k_, v in a.items() if k_ != "embeddings"},
                "attention": {**a["attention"], "examples": {str(i): m for i, m in a["attention"]["examples"].items()}},
                "embeddings": _json_embeddings(a["embeddings"]),
            }
            for label, a in analyses.items()
        },
        "comparison": rows,
        "files": files + [REPORT_FILE],
    }
    report = _plain(report)
    with open(os.path.join(out_dir, REPORT_FILE), "w") as fh:
        json.dump(report, fh, indent=1, allow_nan=False)
    return report


def _plain(value):
    """JSON-ready copy: numpy values as Python ones, NaN and infinities as None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
