"""Approximate retrieval on trained models: the faiss index against brute force, on real users' queries.

The large-catalogue benchmark (``benchmarks/large_catalog.py``) measures the index on a model trained for a few
dozen steps. This script reads finished runs instead (``model.keras`` and ``config.yaml`` of a run directory):

- the index of the model's item table (``tfsidefuse.export.ann.ItemIndex.from_model``: inverted file,
  ``4 sqrt(n)`` lists), its probes calibrated on the validation queries of ``--calibration-users`` users to
  recall@K >= ``--target`` against brute force;
- on every test user: the index's recall@K against brute force, and the test HR@K / NDCG@K of the index's top K
  next to those of the exact top K (the target item's rank among the returned items);
- the median and 99th-percentile time of one query (batch 1), index and brute force (faiss with every list
  probed, i.e. every item scored), on one thread.

Usage::

    python benchmarks/ann_converged.py --runs runs/amazon-beauty/sasrec-tuned-s1 runs/amazon-beauty/difsr-15min-s1
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_vectors(model, prepared, split: str, batch_size: int = 1024):
    """The hidden state each user's items are scored with (``user_embedding``), and the target item ids."""
    import numpy as np
    from keras import ops

    from tfsidefuse.data.pipeline import make_dataset

    vectors, targets = [], []
    for inputs, labels in make_dataset(prepared, split, objective="eval", batch_size=batch_size):
        _, hidden = model._inference_hidden(inputs)
        vectors.append(np.asarray(ops.convert_to_numpy(model.scoring_vectors(hidden)), dtype=np.float32))
        targets.append(np.asarray(labels).reshape(-1))
    return np.concatenate(vectors), np.concatenate(targets)


def hit_and_ndcg(ids, targets):
    """HR@K and NDCG@K of ranked id lists ``[users, K]`` against one target per user."""
    import numpy as np

    found = ids == targets[:, None]
    rank = np.argmax(found, axis=1)
    hit = found.any(axis=1)
    return float(hit.mean()), float(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0).mean())


def latency(search, queries, repeats: int):
    import numpy as np

    times = []
    for i in range(repeats):
        start = time.perf_counter()
        search(queries[i % len(queries)][None, :])
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def measure(run_dir: str, args) -> dict:
    import keras
    import numpy as np

    import tfsidefuse
    from tfsidefuse.data.prepared import PreparedDataset
    from tfsidefuse.export.ann import ItemIndex

    config = tfsidefuse.load_config(os.path.join(run_dir, "config.yaml"))
    prepared_dir = config.dataset.prepared_dir
    if not os.path.isabs(prepared_dir):
        prepared_dir = os.path.join(args.base, prepared_dir)
    prepared = PreparedDataset.open(prepared_dir)
    model = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    if model.item_bias() is not None:
        raise SystemExit(f"{run_dir}: the model adds an item bias to its scores; the index ranks by dot product only")
    valid, _ = user_vectors(model, prepared, "valid")
    test, targets = user_vectors(model, prepared, "test")
    start = time.perf_counter()
    index = ItemIndex.from_model(model, seed=args.seed)
    build_s = time.perf_counter() - start
    rng = np.random.default_rng(args.seed)
    calibration = valid[rng.choice(len(valid), min(args.calibration_users, len(valid)), replace=False)]
    calibrated = index.calibrate(calibration, k=args.k, recall=args.target)
    exact_rows = index.exact_rows(test, args.k)
    recall = index.recall(test, args.k, exact_rows)
    _, approx_ids = index.search(test, args.k)
    exact_ids = index.item_ids[exact_rows]
    probes = index.probes
    approx_p50, approx_p99 = latency(lambda q: index.search(q, args.k), test, args.requests)
    index.probes = index.num_lists  # every list probed: every item scored
    exact_p50, exact_p99 = latency(lambda q: index.search(q, args.k), test, args.requests)
    index.probes = probes
    return {
        "run": os.path.relpath(run_dir, args.base),
        "model": config.model.name,
        "items": index.num_items,
        "users": len(test),
        "lists": index.num_lists,
        "probes": probes,
        "calibrated": calibrated,
        "recall": recall,
        "exact": hit_and_ndcg(exact_ids, targets),
        "approx": hit_and_ndcg(approx_ids, targets),
        "build_s": build_s,
        "approx_ms": (approx_p50, approx_p99),
        "exact_ms": (exact_p50, exact_p99),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="run directories (model.keras, config.yaml)")
    parser.add_argument("--base", default=os.getcwd(), help="where the configs' relative paths start")
    parser.add_argument("--k", type=int, default=10, help="the cut-off of recall, HR and NDCG")
    parser.add_argument("--target", type=float, default=0.95, help="recall@K the probes are calibrated to")
    parser.add_argument("--calibration-users", type=int, default=2000, help="validation queries for calibration")
    parser.add_argument("--requests", type=int, default=500, help="timed single-query searches")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import faiss
    import tensorflow as tf

    faiss.omp_set_num_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    rows = [measure(os.path.abspath(run), args) for run in args.runs]
    k = args.k
    print(
        f"| run | items | test users | lists | probes | calibration recall@{k} | test recall@{k} "
        f"| HR@{k} exact / index | NDCG@{k} exact / index | query p50 / p99 exact (ms) | query p50 / p99 index (ms) "
        "| index build (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['run']} | {r['items']:,} | {r['users']:,} | {r['lists']} | {r['probes']} | {r['calibrated']:.4f} "
            f"| {r['recall']:.4f} | {r['exact'][0]:.4f} / {r['approx'][0]:.4f} | {r['exact'][1]:.4f} / "
            f"{r['approx'][1]:.4f} | {r['exact_ms'][0]:.2f} / {r['exact_ms'][1]:.2f} | {r['approx_ms'][0]:.2f} / "
            f"{r['approx_ms'][1]:.2f} | {r['build_s']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
