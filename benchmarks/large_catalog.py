"""Large catalogues: training, full-ranking evaluation and serving of SASRec and DIF-SR at 10^4 to 10^6 items.

Usage (from the project root):
    python benchmarks/large_catalog.py --sizes 1e4 1e5          # the small sizes first
    python benchmarks/large_catalog.py --sizes 1e6              # then a million items and a million users
    python benchmarks/large_catalog.py --sizes 1e4 1e5 1e6 --report   # only print the tables of the stored results

For each catalogue size N it writes a synthetic log (``tfsidefuse.data.synthetic``: max(N, 10^5) users (the
10^5 is ``--min-users``), mean length 10, power-law popularity with exponent 0.8, sqrt(N) categories and
10 sqrt(N) brands as item attributes) under ``--out`` as RecBole files (item features ``category`` and
``brand``), prepares it, and for each model runs every measurement in its own fresh subprocess
(``TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 OMP_NUM_THREADS=1``; peak memory is the child's
``getrusage(RUSAGE_SELF).ru_maxrss``):

* ``train``: ``training.loss: sampled_softmax`` with ``--negatives`` uniform negatives, ``--steps`` timed steps of
  batch 256 after ``--warmup`` untimed ones (median step time; training targets/s = mean targets per training
  sequence x batch / step time), then the bytes of the model's item-side variables (item embedding, item-feature
  lookup, attribute tables and predictors, their Adam slots) read from the model and its optimizer;
* ``eval``: full ranking of the first ``--eval-users`` users of the test split with ``item_block`` items at a time
  (``tfsidefuse.evaluation.evaluate_in_blocks``);
* ``export``: the SavedModel (``tfsidefuse.export.export_model``, k=10) and its faiss index
  (``tfsidefuse.export.ann.build_index``, probes calibrated to recall@10 ``--calibrate-recall`` (0.97) on the
  export's warm-up requests, so that the recall on other requests clears 0.95);
* ``serve``: p50/p99 latency of ``serving_default`` (brute force) and of the ANN route (``user_embedding`` then the
  index, ``AnnRecommender``) at batch 1 and 32 on real histories (users' sequences without their last event),
  and the ANN's recall@10 against ``serving_default`` on 1,000 of those histories.

Results are kept in ``<out>/results.json``; a finished measurement is not run again unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {
    "sasrec": {"hidden_dim": 64, "num_layers": 2, "num_heads": 2, "ff_dim": 256, "dropout": 0.2},
    "difsr": {
        "features": ["category", "brand"],
        "hidden_dim": 64,
        "attribute_hidden_dim": 32,
        "num_layers": 2,
        "num_heads": 2,
        "ff_dim": 256,
        "dropout": 0.2,
        "fusion": "gate",
        "pooling": "sum",
        "lambda_attr": 5.0,
    },
}
BATCH_SIZE = 256
EVAL_BATCH = 500
MAX_LEN = 50
THREADS = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}
GB = 1e9
MB = 1e6


# ------------------------------------------------------------------------------------------------ set-up


def data_arguments(size: int, seed: int, min_users: int) -> dict:
    categories = max(1, round(math.sqrt(size)))
    return {
        "num_users": max(size, min_users),
        "num_items": size,
        "num_categories": categories,
        "num_brands": 10 * categories,
        "mean_length": 10.0,
        "exponent": 0.8,
        "seed": seed,
    }


def paths(out: str, size: int) -> dict:
    base = os.path.join(out, f"items-{size}")
    return {
        "raw": os.path.join(base, "raw"),
        "prepared": os.path.join(base, "prepared"),
        "runs": os.path.join(base, "runs"),
        "models": os.path.join(base, "models"),
    }


def split_variant(variant: str) -> tuple[str, int | None]:
    """``"lazy_adam+attr1024"`` -> ``("lazy_adam", 1024)``: the optimizer and DIF-SR's ``attribute_negatives``."""
    optimizer, _, attribute_negatives = variant.partition("+attr")
    if optimizer not in ("adam", "lazy_adam") or (attribute_negatives and not attribute_negatives.isdigit()):
        raise argparse.ArgumentTypeError(f"not an optimizer (adam, lazy_adam, optionally +attr<K>): {variant!r}")
    return optimizer, int(attribute_negatives) if attribute_negatives else None


def run_config(out: str, size: int, model: str, negatives: int, seed: int, optimizer: str = "adam"):
    from tfsidefuse.config import RunConfig

    p = paths(out, size)
    run_name = model if optimizer == "adam" else f"{model}-{optimizer}"
    optimizer, attribute_negatives = split_variant(optimizer)
    params = dict(MODELS[model])
    if attribute_negatives and model == "difsr":
        params["attribute_negatives"] = attribute_negatives
    return RunConfig.from_dict(
        {
            "dataset": {"source": "recbole", "path": p["raw"], "prepared_dir": p["prepared"], "max_len": MAX_LEN},
            "model": {"name": model, **params},
            "training": {
                "run_dir": os.path.join(p["runs"], run_name),
                "batch_size": BATCH_SIZE,
                "optimizer": optimizer,
                "loss": "sampled_softmax",
                "num_negatives": negatives,
                "negative_sampler": "uniform",
                "cache": False,
                "seed": seed,
                "verbose": 0,
            },
        }
    )


def peak_rss() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # kilobytes on Linux


def limit_threads() -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


# ------------------------------------------------------------------------------------------------ children


def child_data(args) -> dict:
    from tfsidefuse.data.synthetic import write_synthetic_dataset
    from tfsidefuse.training import trainer

    limit_threads()
    p = paths(args.out, args.size)
    start = time.perf_counter()
    log = write_synthetic_dataset(p["raw"], **data_arguments(args.size, args.seed, args.min_users))
    generated = time.perf_counter() - start
    config = run_config(args.out, args.size, "sasrec", args.negatives, args.seed)
    start = time.perf_counter()
    prepared = trainer.prepare(config, overwrite=True)
    return {
        "generate_write_s": generated,
        "prepare_s": time.perf_counter() - start,
        "users": prepared.stats["users"],
        "events": log.num_events,
        "item_ids": prepared.schema.num_items,
        "train_targets": prepared.stats["train_targets"],
        "train_sequences": prepared.stats["train_sequences"],
        "attribute_vocabulary": sum(f.vocab_size - 2 for f in prepared.schema.item_features),
        "peak_rss_gb": peak_rss(),
    }


def _table_bytes(model) -> dict:
    """Bytes of the model's item-side variables and of their optimizer slots."""

    def kind(path: str) -> str:
        if "item_embedding/embeddings" in path or "item_embedding_embeddings" in path:
            return "item_embedding"
        if "_lookup/table" in path or "_lookup_table" in path:
            return "item_feature_lookup"
        if "side_information_embedding" in path or "_predictor" in path:
            return "attribute_tables"
        return "rest"

    out = {"item_embedding": 0, "item_feature_lookup": 0, "attribute_tables": 0, "rest": 0}
    for v in model.variables:
        out[kind(v.path)] += int(v.numpy().nbytes)
    slots = {"item_embedding": 0, "attribute_tables": 0, "rest": 0}
    for v in model.optimizer.variables:
        slots[kind(v.path) if kind(v.path) in slots else "rest"] += int(v.numpy().nbytes)
    out.update({f"optimizer_{k}": b for k, b in slots.items()})
    return out


def child_train(args) -> dict:
    import keras
    import numpy as np

    from tfsidefuse.data.pipeline import reading
    from tfsidefuse.data.prepared import PreparedDataset
    from tfsidefuse.training import trainer

    limit_threads()
    config = run_config(args.out, args.size, args.model, args.negatives, args.seed, args.optimizer)
    prepared = PreparedDataset.open(config.dataset.prepared_dir)
    keras.utils.set_random_seed(args.seed)
    train_ds, _ = trainer.training_datasets(config, prepared)
    model = trainer.create_model(config, prepared)
    times: list[float] = []

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self.start)

    with reading(prepared):
        model.fit(
            train_ds,
            epochs=1,
            steps_per_epoch=args.warmup + args.steps,
            callbacks=[StepTimer()],
            verbose=0,
            shuffle=False,
        )
    step = float(np.median(times[args.warmup :]))
    per_sequence = prepared.stats["train_targets"] / max(1, prepared.stats["train_sequences"])
    run_dir = config.training.run_dir
    os.makedirs(run_dir, exist_ok=True)
    model.save(os.path.join(run_dir, "model.keras"))
    with open(os.path.join(run_dir, "config.yaml"), "w") as fh:
        import yaml

        yaml.safe_dump(config.to_dict(), fh, sort_keys=False)
    return {
        "step_s": step,
        "first_step_s": times[0],
        "targets_per_s": per_sequence * BATCH_SIZE / step,
        "bytes": _table_bytes(model),
        "peak_rss_gb": peak_rss(),
    }


def child_eval(args) -> dict:
    import keras

    from tfsidefuse.data.pipeline import make_dataset, reading
    from tfsidefuse.data.prepared import PreparedDataset
    from tfsidefuse.evaluation import evaluate_in_blocks

    limit_threads()
    config = run_config(args.out, args.size, args.model, args.negatives, args.seed)
    prepared = PreparedDataset.open(config.dataset.prepared_dir)
    model = keras.models.load_model(os.path.join(config.training.run_dir, "model.keras"))
    users = min(args.eval_users, prepared.stats["test_examples"])
    ds = make_dataset(prepared, "test", objective="eval", batch_size=EVAL_BATCH, shuffle=False, bucket_boundaries=None)
    ds = ds.take(math.ceil(users / EVAL_BATCH))
    start = time.perf_counter()
    with reading(prepared):
        metrics = evaluate_in_blocks(model, ds, args.item_block)
    return {
        "users": users,
        "item_block": args.item_block,
        "eval_s": time.perf_counter() - start,
        "ndcg@10": metrics["ndcg@10"],
        "peak_rss_gb": peak_rss(),
    }


def child_export(args) -> dict:
    import shutil

    from tfsidefuse.export import export_model
    from tfsidefuse.export.ann import build_index

    limit_threads()
    config = run_config(args.out, args.size, args.model, args.negatives, args.seed)
    base = os.path.join(paths(args.out, args.size)["models"], args.model)
    shutil.rmtree(base, ignore_errors=True)
    start = time.perf_counter()
    export = export_model(config.training.run_dir, base, k=10, prepared_dir=config.dataset.prepared_dir)
    exported = time.perf_counter() - start
    start = time.perf_counter()
    index = build_index(export, recall=args.calibrate_recall, k=10)
    return {
        "export": export,
        "export_s": exported,
        "ann_build_s": time.perf_counter() - start,
        "num_lists": index.num_lists,
        "probes": index.probes,
        "calibrated_recall": index.calibrated_recall["recall"],
        "peak_rss_gb": peak_rss(),
    }


def _histories(raw: str, count: int) -> list[list[str]]:
    """The sequences of the first ``count`` users of the log, each without its last event."""
    rows: list[list[str]] = []
    user = None
    with open(os.path.join(raw, os.path.basename(raw) + ".inter")) as fh:
        next(fh)  # the header
        for line in fh:
            who, item = line.rstrip("\n").split("\t")
            if who != user:
                if len(rows) == count:
                    break
                rows.append([])
                user = who
            rows[-1].append(item)
    return [r[:-1][-MAX_LEN:] for r in rows]


def _request(rows: list[list[str]]) -> dict:
    import numpy as np

    width = max(len(r) for r in rows)
    return {"item_ids": np.array([r + [""] * (width - len(r)) for r in rows], dtype=object)}


def _latency(fn, requests: list[dict]) -> tuple[float, float]:
    import numpy as np

    for r in requests[:3]:
        fn(r)
    ms = []
    for r in requests:
        start = time.perf_counter()
        fn(r)
        ms.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def child_serve(args) -> dict:
    import numpy as np
    import tensorflow as tf

    from tfsidefuse.export.ann import AnnRecommender

    limit_threads()
    export = os.path.join(paths(args.out, args.size)["models"], args.model, "1")
    rows = _histories(paths(args.out, args.size)["raw"], 1_000 + 32 * args.requests)
    loaded = tf.saved_model.load(export)
    brute = loaded.signatures["serving_default"]
    route = AnnRecommender(export)

    def serve_brute(request):
        return brute(item_ids=tf.constant(request["item_ids"]))["item_ids"].numpy()

    out = {}
    for batch in (1, 32):
        requests = [_request(rows[i * batch : (i + 1) * batch]) for i in range(args.requests)]
        out[f"brute_b{batch}"] = _latency(serve_brute, requests)
        out[f"ann_b{batch}"] = _latency(route.recommend, requests)
    held_out = rows[-1_000:]
    hits = []
    for first in range(0, len(held_out), 100):
        request = _request(held_out[first : first + 100])
        exact = serve_brute(request)
        found = route.recommend(request)["item_ids"]
        hits += [len({t.decode() for t in e} & set(f)) / len(e) for e, f in zip(exact, found)]
    out["ann_recall@10"] = float(np.mean(hits))
    out["peak_rss_gb"] = peak_rss()
    return out


CHILDREN = {"data": child_data, "train": child_train, "eval": child_eval, "export": child_export, "serve": child_serve}


# ------------------------------------------------------------------------------------------------ parent


def spawn(phase: str, args, size: int, model: str | None, optimizer: str = "adam") -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", phase, "--size", str(size), "--out", args.out]
    command += ["--optimizer", optimizer]
    command += ["--seed", str(args.seed), "--negatives", str(args.negatives), "--steps", str(args.steps)]
    command += ["--warmup", str(args.warmup), "--eval-users", str(args.eval_users)]
    command += ["--item-block", str(args.item_block), "--requests", str(args.requests)]
    command += ["--min-users", str(args.min_users), "--calibrate-recall", str(args.calibrate_recall)]
    if model:
        command += ["--model", model]
    env = {**os.environ, **THREADS, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{phase} (items {size}, {model}) failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def load_results(out: str) -> dict:
    path = os.path.join(out, "results.json")
    if os.path.exists(path):
        with open(path) as fh:
            return json.load(fh)
    return {}


def save_results(out: str, results: dict) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=2)


def measure(args, results: dict) -> None:
    for size in args.sizes:
        key = str(size)
        entry = results.setdefault(key, {})
        if args.force or "data" not in entry:
            print(f"[items {size}] generate and prepare", flush=True)
            entry["data"] = spawn("data", args, size, None)
            save_results(args.out, results)
        for model in args.models:
            runs = entry.setdefault(model, {})
            for phase in ("train", "eval", "export", "serve"):
                if args.force or phase not in runs:
                    print(f"[items {size}] {model}: {phase}", flush=True)
                    runs[phase] = spawn(phase, args, size, model)
                    save_results(args.out, results)
            # The other optimizers (and Adam again, side by side with them): training steps only (evaluation and
            # serving read the model of the Adam run above).
            for optimizer in args.optimizers:
                key = f"train_{optimizer}"
                if (optimizer != "adam" or len(args.optimizers) > 1) and (args.force or key not in runs):
                    print(f"[items {size}] {model}: train with {optimizer}", flush=True)
                    runs[key] = spawn("train", args, size, model, optimizer)
                    save_results(args.out, results)


def train_key(results: dict, optimizer: str) -> str:
    """The results key of an optimizer's training steps: Adam's side-by-side run where there is one."""
    key = f"train_{optimizer}"
    timed = any(key in entry.get(m, {}) for entry in results.values() for m in MODELS)
    return key if timed or optimizer != "adam" else "train"


def report(args, results: dict) -> None:
    sizes = [str(s) for s in args.sizes if str(s) in results]
    print("\nData (one process: generate + write RecBole files, then prepare)")
    print(
        "| items | item ids | users | events | attribute vocabulary | generate + write (s) | prepare (s) "
        "| peak RSS (GB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in sizes:
        d = results[s]["data"]
        print(
            f"| {int(s):,} | {d['item_ids'] - 2:,} | {d['users']:,} | {d['events']:,} "
            f"| {d['attribute_vocabulary']:,} | {d['generate_write_s']:.1f} | {d['prepare_s']:.1f} "
            f"| {d['peak_rss_gb']:.2f} |"
        )
    print(f"\nTraining (sampled softmax, {args.negatives} uniform negatives, batch {BATCH_SIZE}), evaluation, serving")
    print(
        "| items | model | step (ms) | targets/s | train peak RSS (GB) | eval users | eval (s) | eval peak RSS (GB) "
        "| brute p50/p99 b1 (ms) | brute p50/p99 b32 (ms) | ANN p50/p99 b1 (ms) | ANN p50/p99 b32 (ms) "
        "| ANN recall@10 | ANN build (s) | lists / probes |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for s in sizes:
        for model in args.models:
            r = results[s].get(model, {})
            if not all(p in r for p in ("train", "eval", "export", "serve")):
                continue
            t, e, x, v = r["train"], r["eval"], r["export"], r["serve"]
            lat = {k: f"{v[k][0]:.1f} / {v[k][1]:.1f}" for k in ("brute_b1", "brute_b32", "ann_b1", "ann_b32")}
            print(
                f"| {int(s):,} | {model} | {t['step_s'] * 1000:.0f} | {t['targets_per_s']:,.0f} "
                f"| {t['peak_rss_gb']:.2f} | {e['users']:,} | {e['eval_s']:.0f} | {e['peak_rss_gb']:.2f} "
                f"| {lat['brute_b1']} | {lat['brute_b32']} | {lat['ann_b1']} | {lat['ann_b32']} "
                f"| {v['ann_recall@10']:.4f} | {x['ann_build_s']:.0f} | {x['num_lists']} / {x['probes']} |"
            )
    print("\nItem-side tables, from the model's variables and its Adam slots (MB), and the training process (GB)")
    print(
        "| items | model | item embedding | item-feature lookup | attribute tables + predictors | Adam slots of these "
        "| rest of the model + its slots | train peak RSS (GB) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for s in sizes:
        for model in args.models:
            t = results[s].get(model, {}).get("train")
            if not t:
                continue
            b = t["bytes"]
            slots = b["optimizer_item_embedding"] + b["optimizer_attribute_tables"]
            rest = b["rest"] + b["optimizer_rest"]
            print(
                f"| {int(s):,} | {model} | {b['item_embedding'] / MB:.1f} | {b['item_feature_lookup'] / MB:.1f} "
                f"| {b['attribute_tables'] / MB:.1f} | {slots / MB:.1f} | {rest / MB:.1f} | {t['peak_rss_gb']:.2f} |"
            )
    print("\nTraining step (ms) by optimizer, and its growth from the smallest catalogue")
    optimizers = ["adam", *[o for o in args.optimizers if o != "adam"]]
    print("| items | model | " + " | ".join(f"{o} step (ms) | {o} x" for o in optimizers) + " |")
    print("|---:|---|" + "---:|---:|" * len(optimizers))
    small_size = str(min(args.sizes))
    for s in sizes:
        for model in args.models:
            cells = []
            for o in optimizers:
                key = train_key(results, o)
                t = results[s].get(model, {}).get(key)
                base = results.get(small_size, {}).get(model, {}).get(key)
                cells.append(f"{t['step_s'] * 1000:.0f}" if t else "–")
                cells.append(f"{t['step_s'] / base['step_s']:.2f}" if t and base else "–")
            print(f"| {int(s):,} | {model} | " + " | ".join(cells) + " |")
    print("\nTargets")
    top, small = str(max(args.sizes)), str(min(args.sizes))

    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    for model in args.models:
        r = results.get(top, {}).get(model, {})
        if "train" in r:
            rss = r["train"]["peak_rss_gb"]
            print(f"- {model}: training peak RSS at {int(top):,} items {rss:.2f} GB (<= 12 GB: {verdict(rss <= 12)})")
        for o in optimizers:
            key = train_key(results, o)
            base = results.get(small, {}).get(model, {}).get(key)
            if key in r and base and top != small:
                ratio = r[key]["step_s"] / base["step_s"]
                print(
                    f"- {model} ({o}): step time at {int(top):,} / {int(small):,} items = {ratio:.2f}x "
                    f"(<= 1.5x: {verdict(ratio <= 1.5)})"
                )
        if "eval" in r:
            e = r["eval"]
            print(
                f"- {model}: evaluation of {e['users']:,} users over {int(top):,} items: {e['eval_s']:.0f} s, peak RSS "
                f"{e['peak_rss_gb']:.2f} GB (<= 4 GB: {verdict(e['peak_rss_gb'] <= 4)})"
            )
        if "serve" in r:
            v = r["serve"]
            recall = v["ann_recall@10"]
            print(
                f"- {model}: ANN recall@10 {recall:.4f} (>= 0.95: {verdict(recall >= 0.95)}); p50 at batch 1: "
                f"brute force {v['brute_b1'][0]:.1f} ms, ANN {v['ann_b1'][0]:.1f} ms"
            )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6], help="catalogue sizes (items)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "synthetic"), help="data, runs and results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--negatives", type=int, default=1024, help="sampled negatives per step")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument(
        "--optimizers",
        nargs="+",
        default=["adam"],
        type=lambda v: split_variant(v) and v,
        help="optimizers whose training steps are timed (adam, lazy_adam; `+attr<K>`, e.g. lazy_adam+attr1024, "
        "also samples K attribute ids for DIF-SR's attribute predictors); with more than one, adam is timed again "
        "beside the others (evaluation and serving use the first adam run)",
    )
    parser.add_argument("--optimizer", default="adam", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=5, help="untimed training steps first")
    parser.add_argument("--min-users", type=int, default=100_000, help="users: the larger of this and the items")
    parser.add_argument("--eval-users", type=int, default=100_000, help="users of the evaluated test split")
    parser.add_argument("--item-block", type=int, default=65_536, help="items scored at a time in evaluation")
    parser.add_argument(
        "--calibrate-recall", type=float, default=0.97, help="recall@10 the ANN probes are calibrated to (warm-up)"
    )
    parser.add_argument("--requests", type=int, default=50, help="timed serving requests per batch size")
    parser.add_argument("--force", action="store_true", help="measure again what results.json already holds")
    parser.add_argument("--report", action="store_true", help="only print the tables of results.json")
    parser.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = os.path.abspath(args.out)
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return 0
    args.sizes = [int(s) for s in args.sizes]
    results = load_results(args.out)
    if not args.report:
        measure(args, results)
    report(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
