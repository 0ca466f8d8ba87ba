"""TensorFlow Recommenders on an exported model: a TFRS retrieval stack built from the SavedModel's signatures.

The export's ``user_embedding`` signature is the query tower and its ``item_embeddings`` signature the candidate
tower; ``tfrs.layers.factorized_top_k.BruteForce`` indexes every item of the catalogue and answers raw requests
(the ``serving_default`` request format), and ``tfrs.tasks.Retrieval`` with ``tfrs.metrics.FactorizedTopK``
evaluates held-out next items. Since ``user_embedding @ item_embeddings.T`` are the model's scores, the index
returns what ``serving_default`` returns for the same request:

- padding and OOV are not candidates (the index holds the real items only, ``serving_default`` never returns
  them);
- an export made with ``exclude_history`` never recommends an item of the request: the index is queried with
  ``query_with_exclusions``, excluding the raw item ids of the events the model reads (the most recent
  ``max_len`` ones, padding dropped); ``FactorizedTopK`` has no exclusions and ranks every item;
- a row without any event has a zero query embedding (every score 0); ``serving_default`` answers it with the
  most popular items instead. The output lists such rows in ``empty_rows``.

TFRS is written for Keras 2 (the ``tf_keras`` package) and refuses to import under the Keras 3 of TensorFlow
2.16+, so the bridge runs in its own process with ``TF_USE_LEGACY_KERAS=1`` set before TensorFlow is imported
(``pip install "tfsidefuse[tfrs]"`` installs ``tensorflow-recommenders`` and ``tf_keras``). It reads only the
export, and its code is this file alone (it imports nothing of tfsidefuse)::

    TF_USE_LEGACY_KERAS=1 python -m tfsidefuse.export.tfrs_bridge <export>/1 --input in.json --output out.json

``in.json``: ``{"requests": {"item_ids": [[...]], "<feature>": [[...]]}, "held_out": {"history": {...},
"targets": [...]}, "k": 10, "ks": [1, 5, 10]}`` (each part optional; requests are rectangular, ``""`` is
padding, bucketized features are numbers with NaN for unknown). ``out.json``: ``item_ids`` and ``scores`` of the
requests (best first), ``empty_rows``, ``metrics`` (``FactorizedTopK``'s top-k categorical accuracy, by
``top_<k>``) and the library versions. From a Keras 3 process, :func:`run_bridge` starts that process and returns
``out.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

#: The environment variable that makes ``tf.keras`` Keras 2 (``tf_keras``), read when TensorFlow is imported.
LEGACY_KERAS = "TF_USE_LEGACY_KERAS"
QUERY_SIGNATURE = "user_embedding"
CANDIDATE_SIGNATURE = "item_embeddings"
EXPORT_INFO = os.path.join("assets.extra", "export_info.json")
ITEM_VOCABULARY = os.path.join("assets", "item_id.txt")
#: The leading tokens of the item vocabulary that are not items: padding and OOV (ids 0 and 1).
RESERVED_TOKENS = 2
#: Request tokens that are padding, not events.
PADDING = ("", "[PAD]")
DEFAULT_KS = (1, 5, 10)


class BridgeError(RuntimeError):
    """The bridge process could not run (TFRS missing, a bad export or input); the message is its error."""


# ----------------------------------------------------------------------------- in the Keras 2 process


def _catalogue(export_dir: str) -> list[str]:
    """The raw ids of the real items, in id order (the export's item vocabulary without padding and OOV)."""
    with open(os.path.join(export_dir, ITEM_VOCABULARY), encoding="utf-8", newline="") as fh:
        lines = fh.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines][RESERVED_TOKENS:]


def build_stack(export_dir: str, *, k: int, ks: tuple[int, ...] = DEFAULT_KS, batch_size: int = 256) -> dict:
    """The TFRS retrieval stack of an export (call it in a process started with ``TF_USE_LEGACY_KERAS=1``).

    Returns:
        ``{"index": BruteForce with the query tower (raw requests in), "model": a tfrs.models.Model whose
        ``evaluate`` computes FactorizedTopK on ``{"history": request, "target": raw ids}`` batches,
        "query_tower", "candidate_tower", "info": export_info.json}``.
    """
    if os.environ.get(LEGACY_KERAS) not in ("1", "true", "True"):
        raise BridgeError(
            f"TensorFlow Recommenders needs Keras 2: run this process with {LEGACY_KERAS}=1 (set before TensorFlow "
            "is imported)"
        )
    try:
        import tensorflow as tf
        import tensorflow_recommenders as tfrs
    except ImportError as err:
        raise BridgeError(
            f'{err}; the bridge needs tensorflow-recommenders and tf_keras: pip install "tfsidefuse[tfrs]"'
        ) from err

    with open(os.path.join(export_dir, EXPORT_INFO)) as fh:
        info = json.load(fh)
    loaded = tf.saved_model.load(export_dir)
    missing = [name for name in (QUERY_SIGNATURE, CANDIDATE_SIGNATURE) if name not in loaded.signatures]
    if missing:
        raise BridgeError(
            f"the export {export_dir} has no {missing} signature(s): its model ({info.get('model')}) does not score "
            "items by a dot product with the item table, so it has no query and candidate towers"
        )

    class QueryTower(tf.keras.Model):
        """A raw request (``item_ids`` and the interaction features) -> the export's user embedding."""

        def __init__(self) -> None:
            super().__init__(name="query_tower")
            self.saved_model = loaded

        def call(self, request):
            return self.saved_model.signatures[QUERY_SIGNATURE](**request)["embedding"]

    class CandidateTower(tf.keras.Model):
        """Raw item ids -> the export's item embeddings (the rows of the table the model scores against)."""

        def __init__(self) -> None:
            super().__init__(name="candidate_tower")
            self.saved_model = loaded

        def call(self, item_ids):
            return self.saved_model.signatures[CANDIDATE_SIGNATURE](item_ids=item_ids)["embeddings"]

    class HeldOutRetrieval(tfrs.models.Model):
        """The two towers and a Retrieval task whose FactorizedTopK ranks every item for each history."""

        def __init__(self, query_tower, candidate_tower, candidates) -> None:
            super().__init__()
            self.query_tower = query_tower
            self.candidate_tower = candidate_tower
            self.task = tfrs.tasks.Retrieval(metrics=tfrs.metrics.FactorizedTopK(candidates=candidates, ks=ks))

        def compute_loss(self, features, training=False):
            targets = features["target"]
            return self.task(
                self.query_tower(features["history"]),
                self.candidate_tower(targets),
                candidate_ids=targets,  # id-based evaluation: the retrieved raw ids against the target's
                compute_metrics=not training,
            )

    query_tower, candidate_tower = QueryTower(), CandidateTower()
    items = _catalogue(export_dir)
    if not 1 <= k <= len(items):
        raise BridgeError(f"k must be in [1, {len(items)}] (the number of items), got {k}")
    if max(ks) > len(items):
        raise BridgeError(f"ks must be at most {len(items)} (the number of items), got {list(ks)}")
    ids = tf.data.Dataset.from_tensor_slices(tf.constant(items, tf.string)).batch(batch_size)
    candidates = ids.map(lambda batch: (batch, candidate_tower(batch)))
    index = tfrs.layers.factorized_top_k.BruteForce(query_tower, k=k)
    index.index_from_dataset(candidates)
    metric_index = tfrs.layers.factorized_top_k.BruteForce(k=max(ks))
    metric_index.index_from_dataset(candidates)
    model = HeldOutRetrieval(query_tower, candidate_tower, metric_index)
    model.compile()
    return {
        "index": index,
        "model": model,
        "query_tower": query_tower,
        "candidate_tower": candidate_tower,
        "info": info,
        "num_candidates": len(items),
    }


def _request_tensors(request: dict, info: dict) -> dict:
    """A JSON request as the tensors of the export's raw signatures (strings; float64 for bucketized features)."""
    import numpy as np
    import tensorflow as tf

    kinds = {f["name"]: f["kind"] for f in info.get("interaction_features", [])}
    expected = ["item_ids", *kinds]
    if sorted(request) != sorted(expected):
        raise BridgeError(f"a request must hold exactly the inputs {expected}, got {sorted(request)}")
    out = {}
    for name in expected:
        lengths = {len(row) for row in request[name]}
        if len(lengths) > 1:
            raise BridgeError(
                f'`{name}` must be rectangular [batch, events] (pad rows with ""), got row lengths {sorted(lengths)}'
            )
        if kinds.get(name) == "bucketized":
            out[name] = tf.constant(np.asarray(request[name], dtype=np.float64))
        else:
            out[name] = tf.constant(np.asarray(request[name], dtype=object).astype(str).astype(object), tf.string)
    return out


def _history(row: list, max_len: int) -> list[str]:
    """The raw item ids of the events the model reads: padding dropped, the most recent ``max_len``."""
    return [t for t in row if t not in PADDING][-max_len:]


def recommend(stack: dict, request: dict, *, k: int, batch_size: int = 256) -> dict:
    """Top-``k`` raw item ids and scores of a raw request through the TFRS index (history excluded when the
    export excludes it)."""
    import numpy as np

    info = stack["info"]
    index = stack["index"]
    max_len = int(info["max_len"])
    rows = [list(map(str, row)) for row in request["item_ids"]]
    if info.get("exclude_history") and k + max_len > stack["num_candidates"]:
        raise BridgeError(
            f"excluding up to {max_len} history items needs k + max_len <= {stack['num_candidates']} candidates, "
            f"got k={k}"
        )
    ids, scores = [], []
    for start in range(0, len(rows), batch_size):
        part = {name: value[start : start + batch_size] for name, value in request.items()}
        queries = _request_tensors(part, info)
        if info.get("exclude_history"):
            seen = [_history(row, max_len) for row in rows[start : start + batch_size]]
            exclusions = np.array([row + [""] * (max_len - len(row)) for row in seen], dtype=object)
            top_scores, top_ids = index.query_with_exclusions(queries, exclusions, k=k)
        else:
            top_scores, top_ids = index(queries, k=k)
        ids.extend([[t.decode("utf-8") for t in row] for row in top_ids.numpy()])
        scores.extend(top_scores.numpy().astype(float).tolist())
    empty = [r for r, row in enumerate(rows) if not _history(row, max_len)]
    return {"item_ids": ids, "scores": scores, "empty_rows": empty}


def evaluate(stack: dict, held_out: dict, *, ks: tuple[int, ...], batch_size: int = 256) -> dict:
    """FactorizedTopK on held-out next items: ``{"top_<k>": fraction of targets among the top k}``."""
    import tensorflow as tf

    history = _request_tensors(held_out["history"], stack["info"])
    targets = tf.constant([str(t) for t in held_out["targets"]], tf.string)
    if targets.shape[0] != history["item_ids"].shape[0]:
        raise BridgeError(
            f"held_out has {targets.shape[0]} targets but {history['item_ids'].shape[0]} histories: one target each"
        )
    data = tf.data.Dataset.from_tensor_slices({"history": history, "target": targets}).batch(batch_size)
    logs = stack["model"].evaluate(data, return_dict=True, verbose=0)
    return {f"top_{k}": float(logs[f"factorized_top_k/top_{k}_categorical_accuracy"]) for k in ks}


def versions() -> dict:
    import tensorflow as tf
    import tensorflow_recommenders as tfrs
    import tf_keras

    return {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__, "tensorflow_recommenders": tfrs.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tfsidefuse.export.tfrs_bridge",
        description="A TFRS retrieval stack (BruteForce index, FactorizedTopK) on an exported model version. "
        f"Run with {LEGACY_KERAS}=1.",
    )
    parser.add_argument("export_dir", help="an exported version, <base>/<version>")
    parser.add_argument("--input", required=True, help="JSON with 'requests' and/or 'held_out', 'k', 'ks'")
    parser.add_argument("--output", required=True, help="where the JSON results are written")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    try:
        with open(args.input) as fh:
            job = json.load(fh)
        info_path = os.path.join(args.export_dir, EXPORT_INFO)
        if not os.path.exists(info_path):
            raise BridgeError(f"not a tfsidefuse export (no {EXPORT_INFO}): {args.export_dir}")
        with open(info_path) as fh:
            k = int(job.get("k") or json.load(fh)["k"])
        ks = tuple(int(x) for x in job.get("ks") or DEFAULT_KS)
        stack = build_stack(args.export_dir, k=k, ks=ks, batch_size=args.batch_size)
        out: dict[str, Any] = {"k": k, "ks": list(ks), "exclude_history": bool(stack["info"].get("exclude_history"))}
        if job.get("requests") is not None:
            out.update(recommend(stack, job["requests"], k=k, batch_size=args.batch_size))
        if job.get("held_out") is not None:
            out["metrics"] = evaluate(stack, job["held_out"], ks=ks, batch_size=args.batch_size)
        out["num_candidates"] = stack["num_candidates"]
        out["versions"] = versions()
    except BridgeError as err:
        print(f"tfrs_bridge: error: {err}", file=sys.stderr)
        return 2
    with open(args.output, "w") as fh:
        json.dump(out, fh)
    print(f"tfrs_bridge: {len(out.get('item_ids', []))} requests, metrics {out.get('metrics', {})} -> {args.output}")
    return 0


# ----------------------------------------------------------------------------- from any process


def _jsonable(value: Any) -> Any:
    """Nested lists of str / float from arrays, lists and dicts of them (bytes as UTF-8 text)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def run_bridge(
    export_dir: str | os.PathLike,
    requests: dict | None = None,
    held_out: dict | None = None,
    *,
    k: int | None = None,
    ks: tuple[int, ...] = DEFAULT_KS,
    batch_size: int = 256,
    timeout: float = 600,
) -> dict:
    """Runs the bridge on an export in a new Python process with ``TF_USE_LEGACY_KERAS=1``; returns its output.

    Args:
        export_dir: an exported version (``<base>/<version>``).
        requests: raw ``serving_default`` requests: ``{"item_ids": [batch, events], <feature>: ...}``.
        held_out: ``{"history": <a request>, "targets": [batch] raw item ids}``, evaluated by FactorizedTopK.
        k: items per request; default the export's ``k``.
        ks: the cut-offs of FactorizedTopK.
        batch_size: rows per query batch.
        timeout: seconds the process may take.

    Returns:
        ``{"item_ids", "scores", "empty_rows"}`` (with ``requests``), ``"metrics"`` (with ``held_out``), ``"k"``,
        ``"ks"``, ``"exclude_history"``, ``"num_candidates"``, ``"versions"``.

    Raises:
        BridgeError: the process failed; the message ends with its error output.
    """
    job = {"requests": _jsonable(requests), "held_out": _jsonable(held_out), "k": k, "ks": list(ks)}
    env = dict(os.environ, **{LEGACY_KERAS: "1"})
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="tfrs-bridge-") as tmp:
        in_path, out_path = os.path.join(tmp, "in.json"), os.path.join(tmp, "out.json")
        with open(in_path, "w") as fh:
            json.dump(job, fh)
        # This file as a script: the process imports neither tfsidefuse nor Keras 3.
        command = [sys.executable, os.path.abspath(__file__), os.fspath(export_dir)]
        command += ["--input", in_path, "--output", out_path, "--batch-size", str(batch_size)]
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise BridgeError(f"the TFRS bridge exited with status {proc.returncode}:\n{proc.stderr[-4000:]}")
        with open(out_path) as fh:
            return json.load(fh)


if __name__ == "__main__":
    sys.exit(main())
