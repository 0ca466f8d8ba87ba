"""Approximate nearest-neighbour retrieval: an export's ``user_embedding`` queried against an index of its items.

``serving_default`` scores every item of the catalogue for each request (brute force: exact, and the default).
For catalogues of millions of items the alternative route is the pair of embedding signatures: the item table,
read once through ``item_embeddings``, goes into an inverted-file index (faiss ``IndexIVFFlat`` with inner
products: the items are split into ``num_lists`` clusters by k-means, and a query scores the items of the
``probes`` clusters whose centroids score highest, with exact dot products); each request's ``user_embedding``
is then searched there. The scores are the model's logits (``embedding @ item_embeddings.T``), so the route
returns the same items as ``serving_default`` whenever the probed clusters hold them.

faiss (``faiss-cpu`` on PyPI, the ``ann`` extra: ``pip install "tfsidefuse[ann]"``) is used because it installs
beside TensorFlow 2.21 from binary wheels; an index of a million items took two to four minutes on one core of a
loaded machine (reading the table, k-means, calibration: docs/scaling.md#large-catalogues).
ScaNN's 1.4.2 wheel installs beside TensorFlow 2.21 but ``import scann`` fails there (its TensorFlow op library
was built against another TensorFlow), and hnswlib 0.8.0 has no binary wheel for Python 3.11 on Linux.

Layout beside the SavedModel (``<version>/assets.extra/ann/``, which TF Serving ignores)::

    index.faiss     the faiss index (one row per real item: padding and OOV ids are never in it)
    item_ids.txt    the raw item id of each row of the index, one per line
    index.json      dimension, number of items, lists, probes, calibrated recall, faiss version

Example:

```python
from tfsidefuse.export.ann import AnnRecommender, build_index

index = build_index("/models/tfsidefuse/1")        # calibrated on the export's warm-up requests, saved beside it
route = AnnRecommender("/models/tfsidefuse/1")     # loads the saved index
out = route.recommend({"item_ids": [["", "i12", "i7"]], "action": [["", "view", "buy"]]})
out["item_ids"], out["scores"]                     # [1, k] raw ids and scores, as serving_default
```
"""

from __future__ import annotations

import json
import os

import numpy as np

from tfsidefuse.data.schema import NUM_RESERVED_IDS, OOV_TOKEN, PAD_TOKEN
from tfsidefuse.errors import UserError

__all__ = ["ANN_DIR", "AnnError", "AnnRecommender", "ItemIndex", "build_index", "index_dir"]

#: Where `build_index` saves an export's index, under the version directory.
ANN_DIR = os.path.join("assets.extra", "ann")
_INDEX_FILE = "index.faiss"
_IDS_FILE = "item_ids.txt"
_META_FILE = "index.json"
_USER_EMBEDDING = "user_embedding"
_ITEM_EMBEDDINGS = "item_embeddings"
#: Items per `item_embeddings` call when the table is read from an export.
_READ_BATCH = 65_536
#: Request tokens that are padding, as `serving_default` reads them.
_PADDING = ("", PAD_TOKEN)
#: Points per cluster that k-means trains on (faiss needs at least 39; more only slows the build).
_TRAIN_POINTS_PER_LIST = 64


class AnnError(UserError, ValueError):
    """An approximate nearest-neighbour index cannot be built, loaded or queried as asked."""


def _faiss():
    try:
        import faiss
    except ImportError as err:
        raise ImportError(
            'approximate nearest-neighbour retrieval needs faiss: pip install "tfsidefuse[ann]" (faiss-cpu)'
        ) from err
    return faiss


def index_dir(export_dir: str | os.PathLike) -> str:
    """The directory of an export's saved index: ``<export_dir>/assets.extra/ann``."""
    return os.path.join(os.fspath(export_dir), ANN_DIR)


def _check_int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise AnnError(f"{name} must be an int in [{low}, {high}], got {name}={value!r}")
    return int(value)


def _as_matrix(name: str, value, dim: int | None = None) -> np.ndarray:
    """float32 C-contiguous ``[n, dim]``, finite, or an error naming the input and what it got."""
    array = np.asarray(value)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise AnnError(f"{name} must be a non-empty 2-D array [n, d], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise AnnError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if dim is not None and array.shape[1] != dim:
        raise AnnError(f"{name} must have {dim} columns (the index's dimension), got shape {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise AnnError(f"{name} holds NaN or infinite values (row {int(np.argmin(np.isfinite(array).all(1)))})")
    return array


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of |found ∩ exact| / k, rows of item rows (``-1``: nothing found)."""
    k = exact.shape[1]
    hits = [len(np.intersect1d(f[f >= 0], e)) for f, e in zip(found, exact)]
    return float(np.mean(hits) / k)


class ItemIndex:
    """An inverted-file index of item embeddings that returns the items of largest inner product with a query.

    Args:
        index: a trained faiss ``IndexIVFFlat`` with inner products, one vector per item.
        item_ids: ``[index.ntotal]`` the item id of each row (raw ids of an export, or model ids).
        probes: clusters scored per query (``1 .. num_lists``; more: higher recall, slower).
        calibrated_recall: the recall@k measured by `calibrate`, if it ran.
    """

    def __init__(self, index, item_ids, probes: int, calibrated_recall: dict | None = None) -> None:
        self.index = index
        self.item_ids = np.asarray(item_ids)
        if self.item_ids.shape != (index.ntotal,):
            raise AnnError(
                f"item_ids must hold one id per indexed item ({index.ntotal}), got shape {self.item_ids.shape}"
            )
        self.probes = _check_int("probes", probes, 1, self.num_lists)
        self.calibrated_recall = calibrated_recall

    # ------------------------------------------------------------------------------------------------ building

    @classmethod
    def build(
        cls,
        embeddings,
        item_ids,
        *,
        num_lists: int | None = None,
        probes: int | None = None,
        seed: int = 0,
    ) -> ItemIndex:
        """An index of ``embeddings [n, d]`` (row ``i`` is item ``item_ids[i]``).

        Args:
            embeddings: the item vectors that user embeddings are scored against.
            item_ids: ``[n]`` the id of each row, returned by `search`.
            num_lists: k-means clusters; default ``4 sqrt(n)``, at most ``n / 39`` (at least 1).
            probes: clusters scored per query; default an eighth of the lists (at least 1). `calibrate` tunes it.
            seed: seed of the k-means training sample and initialisation.
        """
        faiss = _faiss()
        vectors = _as_matrix("embeddings", embeddings)
        n, dim = vectors.shape
        item_ids = np.asarray(item_ids)
        if item_ids.shape != (n,):
            raise AnnError(f"item_ids must hold one id per embedding row ({n}), got shape {item_ids.shape}")
        most = max(1, n // 39)
        if num_lists is None:
            num_lists = int(min(max(1, round(4 * np.sqrt(n))), most))
        num_lists = _check_int("num_lists", num_lists, 1, most)
        probes = max(1, num_lists // 8) if probes is None else _check_int("probes", probes, 1, num_lists)
        seed = _check_int("seed", seed, 0, 2**31 - 1)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, num_lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        sample = vectors
        if n > _TRAIN_POINTS_PER_LIST * num_lists:
            rows = np.random.default_rng(seed).choice(n, _TRAIN_POINTS_PER_LIST * num_lists, replace=False)
            sample = vectors[np.sort(rows)]
        index.train(sample)
        index.add(vectors)
        return cls(index, item_ids, probes)

    @classmethod
    def from_model(cls, model, vocabulary: list[str] | None = None, **build_kwargs) -> ItemIndex:
        """An index of a Keras next-item model's item table (``model.backbone.item_table()``), reserved ids left out.

        Args:
            model: a `NextItemModel` whose scores are ``hidden @ item_table().T``.
            vocabulary: the item vocabulary (``prepared.vocabulary("item_id")``) to return raw ids; default the
                model's item ids (``2 .. num_items - 1``, the ids of ``model.top_k``).
            **build_kwargs: arguments of `build`.
        """
        import keras

        table = np.asarray(keras.ops.convert_to_numpy(model.backbone.item_table()), dtype=np.float32)
        if vocabulary is None:
            ids = np.arange(NUM_RESERVED_IDS, len(table), dtype=np.int64)
        else:
            if len(vocabulary) != len(table):
                raise AnnError(f"vocabulary has {len(vocabulary)} entries but the model scores {len(table)} item ids")
            ids = np.asarray(vocabulary[NUM_RESERVED_IDS:], dtype=object)
        return cls.build(table[NUM_RESERVED_IDS:], ids, **build_kwargs)

    @classmethod
    def from_saved_model(cls, export_dir: str | os.PathLike, **build_kwargs) -> ItemIndex:
        """An index of an export's items, read through its ``item_embeddings`` signature (raw item ids)."""
        import tensorflow as tf

        export_dir = os.fspath(export_dir)
        loaded = _load_saved_model(export_dir)
        signature = _signature(loaded, _ITEM_EMBEDDINGS, export_dir)
        tokens = _export_items(export_dir)
        parts = []
        for first in range(0, len(tokens), _READ_BATCH):
            out = signature(item_ids=tf.constant(tokens[first : first + _READ_BATCH], dtype=tf.string))
            if not bool(tf.reduce_all(out["known"])):
                raise AnnError(f"{export_dir}: the item vocabulary of its assets does not match its item table")
            parts.append(out["embeddings"].numpy())
        return cls.build(np.concatenate(parts), np.asarray(tokens, dtype=object), **build_kwargs)

    # ------------------------------------------------------------------------------------------------ querying

    @property
    def num_items(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def num_lists(self) -> int:
        return int(self.index.nlist)

    def _rows(self, vectors, k: int, probes: int) -> tuple[np.ndarray, np.ndarray]:
        vectors = _as_matrix("vectors", vectors, self.dim)
        k = _check_int("k", k, 1, self.num_items)
        self.index.nprobe = probes
        scores, rows = self.index.search(vectors, k)
        return scores, rows

    def search(self, vectors, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items of largest inner product with each query, best first.

        Args:
            vectors: float ``[batch, d]``, e.g. ``user_embedding``'s ``embedding``.
            k: items per query, in ``[1, num_items]``.

        Returns:
            ``(scores, ids)``: float32 ``[batch, k]`` dot products and the items' ids ``[batch, k]``. Where the
            probed clusters hold fewer than ``k`` items the row ends with score ``-inf`` and id ``None`` (raw
            ids) or ``-1`` (model ids).
        """
        scores, rows = self._rows(vectors, k, self.probes)
        missing = rows < 0
        ids = self.item_ids[np.where(missing, 0, rows)]
        if missing.any():
            ids = ids.astype(object) if ids.dtype.kind in "OUS" else ids
            ids[missing] = None if ids.dtype == object else -1
            scores = np.where(missing, -np.inf, scores).astype(np.float32)
        return scores, ids

    def exact_rows(self, vectors, k: int = 10) -> np.ndarray:
        """The rows of the exact top ``k`` of each query (every item scored), ``[batch, k]``."""
        vectors = _as_matrix("vectors", vectors, self.dim)
        k = _check_int("k", k, 1, self.num_items)
        self.index.nprobe = self.num_lists
        _, rows = self.index.search(vectors, k)
        self.index.nprobe = self.probes
        return rows

    def recall(self, vectors, k: int = 10, exact: np.ndarray | None = None) -> float:
        """Recall@k of `search` against the exact top ``k`` (every item scored), averaged over the queries."""
        exact = self.exact_rows(vectors, k) if exact is None else exact
        _, rows = self._rows(vectors, k, self.probes)
        return _recall(rows, exact)

    def calibrate(self, vectors, k: int = 10, recall: float = 0.95) -> float:
        """Sets `probes` to the fewest clusters whose recall@k on these queries reaches ``recall``.

        Args:
            vectors: sample queries ``[n, d]`` (real user embeddings: the export's warm-up requests, a
                validation batch).
            k: the recall's cut-off.
            recall: the target, in ``(0, 1]``.

        Returns:
            The recall@k reached with the chosen probes (1.0 when every cluster is probed).
        """
        if isinstance(recall, bool) or not isinstance(recall, (int, float)) or not 0 < recall <= 1:
            raise AnnError(f"recall must be a number in (0, 1], got recall={recall!r}")
        exact = self.exact_rows(vectors, k)
        low, high = 1, self.num_lists  # recall grows with the probes: the smallest passing count, by bisection
        reached = {high: 1.0}
        while low < high:
            middle = (low + high) // 2
            self.probes = middle
            reached[middle] = self.recall(vectors, k, exact)
            if reached[middle] >= recall:
                high = middle
            else:
                low = middle + 1
        self.probes = high
        self.calibrated_recall = {"k": k, "target": recall, "recall": reached[high], "queries": len(exact)}
        return reached[high]

    # ------------------------------------------------------------------------------------------------ files

    def save(self, directory: str | os.PathLike) -> str:
        """Writes ``index.faiss``, ``item_ids.txt`` and ``index.json`` to ``directory``; returns it."""
        faiss = _faiss()
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        faiss.write_index(self.index, os.path.join(directory, _INDEX_FILE))
        raw = self.item_ids.dtype == object or self.item_ids.dtype.kind in "US"
        with open(os.path.join(directory, _IDS_FILE), "w") as fh:
            fh.write("".join(f"{i}\n" for i in self.item_ids.tolist()))
        meta = {
            "dim": self.dim,
            "num_items": self.num_items,
            "num_lists": self.num_lists,
            "probes": self.probes,
            "metric": "inner_product",
            "item_ids": "raw" if raw else "model",
            "calibrated_recall": self.calibrated_recall,
            "faiss": faiss.__version__,
        }
        with open(os.path.join(directory, _META_FILE), "w") as fh:
            json.dump(meta, fh, indent=2)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ItemIndex:
        """Reads an index written by `save`.

        Raises:
            FileNotFoundError: a file is missing.
            AnnError: the files do not belong together.
        """
        faiss = _faiss()
        directory = os.fspath(directory)
        for name in (_INDEX_FILE, _IDS_FILE, _META_FILE):
            if not os.path.exists(os.path.join(directory, name)):
                raise FileNotFoundError(f"no saved item index in {directory} (missing {name}); build it first")
        with open(os.path.join(directory, _META_FILE)) as fh:
            meta = json.load(fh)
        index = faiss.read_index(os.path.join(directory, _INDEX_FILE))
        with open(os.path.join(directory, _IDS_FILE)) as fh:
            ids = fh.read().split("\n")[:-1]
        if index.ntotal != meta["num_items"] or len(ids) != meta["num_items"] or index.d != meta["dim"]:
            raise AnnError(
                f"{directory}: index.faiss holds {index.ntotal} vectors of dimension {index.d}, item_ids.txt "
                f"{len(ids)} ids, index.json says {meta['num_items']} of dimension {meta['dim']}"
            )
        item_ids = np.asarray(ids, dtype=object) if meta["item_ids"] == "raw" else np.asarray(ids, dtype=np.int64)
        return cls(index, item_ids, meta["probes"], meta.get("calibrated_recall"))


# ---------------------------------------------------------------------------------------------------- exports


def _load_saved_model(export_dir: str):
    import tensorflow as tf

    if not os.path.exists(os.path.join(export_dir, "saved_model.pb")):
        raise FileNotFoundError(f"not a SavedModel directory (no saved_model.pb): {export_dir}")
    return tf.saved_model.load(export_dir)


def _signature(loaded, name: str, export_dir: str):
    if name not in loaded.signatures:
        raise AnnError(
            f"{export_dir} has no `{name}` signature (signatures: {sorted(loaded.signatures)}); only models scored "
            "by a dot product with the item table (not the Cloze models) export the embedding signatures"
        )
    return loaded.signatures[name]


def _export_info(export_dir: str) -> dict:
    path = os.path.join(export_dir, "assets.extra", "export_info.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no assets.extra/export_info.json in {export_dir}; is it a tfsidefuse export?")
    with open(path) as fh:
        return json.load(fh)


def _export_items(export_dir: str) -> list[str]:
    """The export's raw item ids, in id order, reserved ids left out (from its vocabulary asset)."""
    path = os.path.join(export_dir, "assets", "item_id.txt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no item vocabulary in {export_dir} (expected assets/item_id.txt)")
    with open(path) as fh:
        tokens = fh.read().split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    expected = _export_info(export_dir)["num_items"]
    if tokens[:NUM_RESERVED_IDS] != [PAD_TOKEN, OOV_TOKEN] or len(tokens) != expected:
        raise AnnError(f"{path} is not the export's item vocabulary ({len(tokens)} lines for {expected} item ids)")
    return tokens[NUM_RESERVED_IDS:]


def _warmup_queries(export_dir: str) -> list[dict]:
    """The ``serving_default`` requests of the export's warm-up file."""
    from tfsidefuse.export.warmup import WARMUP_FILE, read_warmup_file

    path = os.path.join(export_dir, "assets.extra", WARMUP_FILE)
    if not os.path.exists(path):
        return []
    return [inputs for _, signature, inputs in read_warmup_file(path) if signature == "serving_default"]


def build_index(
    export_dir: str | os.PathLike,
    *,
    recall: float | None = 0.95,
    k: int = 10,
    queries: list[dict] | None = None,
    save: bool = True,
    **build_kwargs,
) -> ItemIndex:
    """Builds the index of an export's items, calibrates its probes and saves it beside the SavedModel.

    Args:
        export_dir: an export version directory (``<base>/<version>``).
        recall: calibrate `probes` to this recall@k against the exact top k; ``None`` keeps the probes given.
        k: the recall's cut-off.
        queries: raw ``serving_default`` requests whose user embeddings calibrate the probes; default the
            export's warm-up requests (real validation histories).
        save: write the index to ``<export_dir>/assets.extra/ann``.
        **build_kwargs: `ItemIndex.build` arguments (``num_lists``, ``probes``, ``seed``).

    Raises:
        AnnError: the export has no embedding signatures, or no requests to calibrate with.
    """
    import tensorflow as tf

    export_dir = os.fspath(export_dir)
    index = ItemIndex.from_saved_model(export_dir, **build_kwargs)
    if recall is not None:
        requests = _warmup_queries(export_dir) if queries is None else queries
        if not requests:
            raise AnnError(f"{export_dir}: no requests to calibrate the index with (pass queries=..., or recall=None)")
        embed = _signature(_load_saved_model(export_dir), _USER_EMBEDDING, export_dir)
        vectors = np.concatenate(
            [embed(**{name: tf.constant(v) for name, v in r.items()})["embedding"].numpy() for r in requests]
        )
        index.calibrate(vectors, k=min(k, index.num_items), recall=recall)
    if save:
        index.save(index_dir(export_dir))
    return index


class AnnRecommender:
    """The ``serving_default`` contract of an export answered through its item index: raw request in, top ``k`` out.

    A request goes through the export's ``user_embedding`` signature (the same encoding, padding and truncation
    as ``serving_default``), then the index. As ``serving_default``: padding and OOV are never returned (they
    are not in the index), a row without any event gets the export's most popular items (taken from
    ``serving_default`` itself), and with the export's ``exclude_history`` the request's own items are left out.

    Args:
        export_dir: an export version directory.
        index: an `ItemIndex` of the export's items; default the one saved by `build_index`.
        k: items per request; default the export's ``k``.
    """

    def __init__(self, export_dir: str | os.PathLike, index: ItemIndex | None = None, k: int | None = None) -> None:
        import tensorflow as tf

        self.export_dir = os.fspath(export_dir)
        self.info = _export_info(self.export_dir)
        self.index = ItemIndex.load(index_dir(self.export_dir)) if index is None else index
        if self.index.item_ids.dtype != object:
            raise AnnError("the index must hold the export's raw item ids (ItemIndex.from_saved_model)")
        self.k = _check_int("k", self.info["k"] if k is None else k, 1, self.index.num_items)
        self.exclude_history = bool(self.info["exclude_history"])
        self._loaded = _load_saved_model(self.export_dir)
        self._embed = _signature(self._loaded, _USER_EMBEDDING, self.export_dir)
        self._specs = self._embed.structured_input_signature[1]
        width = self.index.dim
        probe = self._embed(**{name: tf.constant(self._empty(spec)) for name, spec in self._specs.items()})
        if probe["embedding"].shape[-1] != width:
            raise AnnError(
                f"the index holds vectors of dimension {width} but {self.export_dir} embeds users in "
                f"{probe['embedding'].shape[-1]}; build the index from this export"
            )
        popular = self._loaded.signatures["serving_default"](
            **{name: tf.constant(self._empty(spec)) for name, spec in self._specs.items()}
        )
        self._popular_ids = np.array([t.decode() for t in popular["item_ids"].numpy()[0]], dtype=object)
        self._popular_scores = popular["scores"].numpy()[0]

    @staticmethod
    def _empty(spec) -> np.ndarray:
        return np.array([[""]], dtype=object) if spec.dtype.name == "string" else np.array([[np.nan]])

    def recommend(self, request: dict) -> dict[str, np.ndarray]:
        """Top ``k`` raw item ids (``str``, object array ``[batch, k]``) and scores (float32) of a raw request.

        Args:
            request: the inputs of ``serving_default``: ``item_ids`` ``[batch, events]`` raw ids (``""``: padding)
                and one ``[batch, events]`` input per interaction feature the model reads.
        """
        import tensorflow as tf

        missing = sorted(set(self._specs) - set(request))
        unknown = sorted(set(request) - set(self._specs))
        if missing or unknown:
            raise AnnError(f"request inputs must be {sorted(self._specs)}; missing {missing}, unexpected {unknown}")
        feed = {name: tf.constant(request[name], dtype=self._specs[name].dtype) for name in self._specs}
        vectors = self._embed(**feed)["embedding"].numpy()
        max_len = int(self.info["max_len"])
        # The events the model reads, as serving_default keeps them: padding dropped, the most recent max_len.
        history = [
            [t for t in (v.decode() if isinstance(v, bytes) else str(v) for v in row) if t not in _PADDING][-max_len:]
            for row in np.asarray(request["item_ids"], dtype=object)
        ]
        extra = max(len(row) for row in history) if self.exclude_history else 0
        fetch = min(self.k + extra, self.index.num_items)
        scores, ids = self.index.search(vectors, fetch)
        out_ids = np.full((len(vectors), self.k), None, dtype=object)
        out_scores = np.full((len(vectors), self.k), -np.inf, dtype=np.float32)
        for r, row in enumerate(history):
            if not row:
                n = min(self.k, len(self._popular_ids))
                out_ids[r, :n], out_scores[r, :n] = self._popular_ids[:n], self._popular_scores[:n]
                continue
            seen = set(row) if self.exclude_history else set()
            keep = [j for j in range(fetch) if ids[r, j] is not None and ids[r, j] not in seen][: self.k]
            out_ids[r, : len(keep)] = ids[r, keep]
            out_scores[r, : len(keep)] = scores[r, keep]
        return {"item_ids": out_ids, "scores": out_scores}
