import os

import numpy as np
import pytest
import tensorflow as tf

from tfsidefuse.data.ingest import encode
from tfsidefuse.data.manifest import write_manifest
from tfsidefuse.data.pipeline import (
    bucket_batch_sizes,
    count_batches,
    count_examples,
    length_buckets,
    make_dataset,
    parse_sequence_examples,
)
from tfsidefuse.data.prepared import PreparedDataset, sequence_example, write_prepared
from tfsidefuse.data.schema import FeatureSpec


@pytest.fixture
def prepared(tiny_raw, tmp_path):
    return PreparedDataset.open(write_prepared(encode(tiny_raw, max_len=3), tmp_path / "tiny", num_shards=2))


def batches(ds):
    return [({k: v.numpy().tolist() for k, v in x.items()}, y.numpy().tolist()) for x, y in ds]


def test_prepared_directory_round_trip(prepared, tiny_raw):
    enc = encode(tiny_raw, max_len=3)
    assert prepared.schema == enc.schema
    assert prepared.vocabulary("item_id") == enc.vocabularies["item_id"]
    np.testing.assert_array_equal(prepared.item_feature_tables["cat"], enc.item_feature_tables["cat"])
    assert prepared.stats["train_records"] == prepared.stats["valid_records"] == 2
    assert len(prepared.files("train")) == 2
    # Each split's record holds the events up to its target: a has 4 events, b 3.
    records = {}
    for split in ("train", "valid", "test"):
        ds = tf.data.TFRecordDataset(prepared.files(split)).map(lambda s: parse_sequence_examples(s, prepared.schema))
        records[split] = sorted(
            (int(r["user_id"]), r["item_id"].numpy().tolist(), r["rating"].numpy().tolist()) for r in ds
        )
    assert records["test"] == [(2, [2, 3, 4, 4], [5, 4, 6, 3]), (3, [2, 3, 5], [2, 2, 3])]
    assert records["valid"] == [(2, [2, 3, 4], [5, 4, 6]), (3, [2, 3], [2, 2])]
    assert records["train"] == [(2, [2, 3], [5, 4]), (3, [2], [2])]


def test_eval_mode_left_pads_and_truncates(prepared):
    out = batches(make_dataset(prepared, "test", batch_size=4, shuffle=False, max_len=2))
    assert len(out) == 1
    x, y = out[0]
    # a: history y z x (truncated to the last 2: z x), target x; b: history y z, target w.
    pairs = dict(zip(map(tuple, x["item_ids"]), y))
    assert pairs == {(3, 4): 4, (2, 3): 5}
    out = batches(make_dataset(prepared, "valid", batch_size=4, shuffle=False))
    x, y = out[0]
    pairs = {tuple(ids): (label, tuple(r)) for ids, label, r in zip(x["item_ids"], y, x["rating"])}
    # Left padding: b's history [y] becomes [0, y]; features are padded the same way.
    assert pairs == {(2, 3): (4, (5, 4)), (0, 2): (3, (0, 2))}


def test_all_positions_and_prefix_modes(prepared):
    ((x, y),) = batches(make_dataset(prepared, "test", objective="all_positions", batch_size=4, shuffle=False))
    rows = {tuple(i): tuple(t) for i, t in zip(x["item_ids"], y)}
    # a: inputs y z x -> labels z x x; b: inputs y z -> labels z w (left-padded to the batch's longest).
    assert rows == {(2, 3, 4): (3, 4, 4), (0, 2, 3): (0, 3, 5)}
    got = batches(make_dataset(prepared, "test", objective="prefix", batch_size=16, shuffle=False))
    ((x, y),) = got
    prefixes = sorted((tuple(v for v in i if v), t) for i, t in zip(x["item_ids"], y))
    assert prefixes == sorted([((2,), 3), ((2, 3), 4), ((2, 3, 4), 4), ((2,), 3), ((2, 3), 5)])
    ((x, y),) = batches(make_dataset(prepared, "test", objective="prefix", batch_size=16, shuffle=False, max_len=1))
    assert all(len(i) == 1 for i in x["item_ids"])


def test_pad_to_max_len_and_feature_selection(prepared):
    ds = make_dataset(prepared, "valid", batch_size=4, shuffle=False, pad_to_max_len=True, features=["gap"])
    x, y = next(iter(ds))
    assert set(x) == {"item_ids", "gap"}
    assert x["item_ids"].shape == (2, 3) and x["item_ids"].dtype == tf.int32
    assert y.shape == (2,)
    with pytest.raises(ValueError, match=r"unknown interaction feature\(s\) \['cat'\]"):
        make_dataset(prepared, "valid", features=["cat"])
    with pytest.raises(ValueError, match="objective must be one of .* got 'sliding'"):
        make_dataset(prepared, "valid", objective="sliding")
    with pytest.raises(ValueError, match="split must be one of .* got 'dev'"):
        make_dataset(prepared, "dev")


def test_shuffle_is_seeded_and_covers_every_user(tmp_path):
    import pandas as pd

    from tfsidefuse.data.raw_dataset import RawDataset

    users = np.repeat(np.arange(50), 4).astype(str)
    items = np.tile(["a", "b", "c", "d"], 50)
    prepared = PreparedDataset.open(
        write_prepared(
            encode(RawDataset("many", pd.DataFrame({"user": users, "item": items}))), tmp_path / "many", num_shards=3
        )
    )

    def order(seed):
        ds = make_dataset(prepared, "test", batch_size=8, shuffle=True, seed=seed, shuffle_buffer=64)
        return [tuple(v) for x, _ in ds for v in x["item_ids"].numpy().tolist()], sum(int(y.shape[0]) for _, y in ds)

    first, n = order(1)
    assert order(1)[0] == first and n == 50


def test_atomic_write_refuses_overwrite_and_cleans_up(tiny_raw, tmp_path, monkeypatch):
    enc = encode(tiny_raw)
    target = tmp_path / "ds"
    write_prepared(enc, target)
    with pytest.raises(FileExistsError, match="already exists"):
        write_prepared(enc, target)

    # An interrupted write leaves neither the target nor a temporary directory behind.
    import tfsidefuse.data.prepared as prepared_module

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepared_module, "_save_npz", boom)
    with pytest.raises(KeyboardInterrupt):
        write_prepared(enc, tmp_path / "other")
    assert sorted(os.listdir(tmp_path)) == ["ds"]
    # Overwriting replaces the old content only when the new one is complete.
    with pytest.raises(KeyboardInterrupt):
        write_prepared(enc, target, overwrite=True)
    assert PreparedDataset.open(target).schema == enc.schema
    assert sorted(os.listdir(tmp_path)) == ["ds"]


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
        PreparedDataset.open(tmp_path)


def test_malformed_record_names_the_missing_feature(prepared, tmp_path):
    bad = tmp_path / "bad" / "test"
    bad.mkdir(parents=True)
    for name in os.listdir(prepared.directory):
        if name not in ("train", "valid", "test"):
            src = os.path.join(prepared.directory, name)
            dst = os.path.join(tmp_path / "bad", name)
            os.symlink(src, dst)
    with tf.io.TFRecordWriter(str(bad / "part-00000-of-00001.tfrecord")) as w:
        w.write(sequence_example(2, [2, 3, 4], {}))  # no "rating" / "gap" lists
    os.remove(tmp_path / "bad" / "manifest.json")  # a symlink to the original's
    write_manifest(str(tmp_path / "bad"))  # a consistent directory whose record lacks the declared features
    with pytest.raises(tf.errors.InvalidArgumentError, match="rating|gap"):
        list(make_dataset(tmp_path / "bad", "test", batch_size=2))


@pytest.mark.parametrize("objective", ["all_positions", "prefix", "eval"])
@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_declared_cardinality_matches_the_data(prepared, objective, split):
    ds = make_dataset(prepared, split, objective=objective, batch_size=1, shuffle=False)
    # A wrong declared cardinality makes iteration fail at the end.
    assert int(ds.cardinality()) == sum(1 for _ in ds) == count_examples(prepared, split, objective)


@pytest.fixture
def varied(tmp_path):
    """40 users with 3 to 20 events and a per-event rating, windows of at most 8 events."""
    import pandas as pd

    from tfsidefuse.data.raw_dataset import RawDataset

    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{rng.integers(30)}", t, int(rng.integers(1, 6))) for u in range(40) for t in range(3 + u % 18)]
    frame = pd.DataFrame(rows, columns=["user", "item", "time", "rating"])
    raw = RawDataset("varied", frame, features=[FeatureSpec("rating", "interaction", "categorical", column="rating")])
    return PreparedDataset.open(write_prepared(encode(raw, max_len=8), tmp_path / "varied", num_shards=2))


def _examples(ds):
    """Every example of a dataset as (item ids without padding, rating without padding, label), sorted."""
    out = []
    for x, y in batches(ds):
        for i, ids in enumerate(x["item_ids"]):
            real = [k for k, v in enumerate(ids) if v != 0]
            label = y[i] if isinstance(y[i], int) else tuple(y[i][k] for k in real)
            out.append((tuple(ids[k] for k in real), tuple(x["rating"][i][k] for k in real), label))
    return sorted(out)


def test_length_buckets():
    assert length_buckets(50) == [2, 4, 7, 14, 26, 50]
    assert length_buckets(8) == [2, 3, 5, 6, 8] and length_buckets(1) == [1]
    with pytest.raises(ValueError, match="max_len"):
        length_buckets(0)


@pytest.mark.parametrize("objective", ["all_positions", "prefix", "eval"])
@pytest.mark.parametrize("pad_to_max_len", [False, True])
def test_bucketing_keeps_every_example_and_pads_within_the_bucket(varied, objective, pad_to_max_len):
    bounds = [2, 5, 8]
    kwargs = {"objective": objective, "batch_size": 3, "shuffle": False}
    plain = make_dataset(varied, "train", **kwargs)
    bucketed = make_dataset(varied, "train", bucket_boundaries=bounds, pad_to_max_len=pad_to_max_len, **kwargs)
    assert _examples(bucketed) == _examples(plain)
    assert int(bucketed.cardinality()) == sum(1 for _ in bucketed)
    widths = set()
    for x, y in bucketed:
        ids = x["item_ids"].numpy()
        lengths = (ids != 0).sum(axis=1)
        bucket = [next(i for i, b in enumerate(bounds) if n <= b) for n in lengths]
        assert len(set(bucket)) == 1, f"one batch mixes buckets: lengths {lengths}"
        # Left padding: the last slot is always real.
        assert np.all(ids[:, -1] != 0)
        expected_width = bounds[bucket[0]] if pad_to_max_len else lengths.max()
        assert ids.shape[1] == expected_width and x["rating"].shape == ids.shape
        if objective == "all_positions":
            assert y.shape == ids.shape
        widths.add(ids.shape[1])
    assert len(widths) > 1


@pytest.mark.parametrize("bad", [[], [3, 2], [0, 4], [2, 9], "big", [2.5]])
def test_bad_bucket_boundaries_name_the_value(varied, bad):
    with pytest.raises(ValueError, match="bucket_boundaries"):
        make_dataset(varied, "train", bucket_boundaries=bad)


def test_auto_buckets_close_at_max_len(varied):
    ds = make_dataset(varied, "train", batch_size=4, shuffle=False, bucket_boundaries="auto", pad_to_max_len=True)
    assert {int(x["item_ids"].shape[1]) for x, _ in ds} <= set(length_buckets(8))
    assert int(ds.cardinality()) == sum(1 for _ in ds)


def test_auto_buckets_evaluate_without_padding(varied):
    plain = make_dataset(varied, "valid", batch_size=4)
    auto = make_dataset(varied, "valid", batch_size=4, bucket_boundaries="auto")
    assert _examples(auto) == _examples(plain)
    assert int(auto.cardinality()) == sum(1 for _ in auto)
    for x, _ in auto:
        assert np.all(x["item_ids"].numpy() != 0), "an evaluation batch carries padding"
    # The geometric buckets (a batch may mix lengths 3 and 5) would pad; XLA's fixed shapes keep them.
    padded = make_dataset(varied, "valid", batch_size=4, bucket_boundaries=length_buckets(8))
    assert any(np.any(x["item_ids"].numpy() == 0) for x, _ in padded)
    fixed = make_dataset(varied, "valid", batch_size=4, bucket_boundaries="auto", pad_to_max_len=True)
    assert {int(x["item_ids"].shape[1]) for x, _ in fixed} <= set(length_buckets(8))


def test_all_position_buckets_hold_about_as_many_slots_as_a_random_batch(varied):
    bounds = [2, 5, 8]
    plain = make_dataset(varied, "train", batch_size=4, shuffle=False)
    lengths = np.array([len(ids) for ids, _, _ in _examples(plain)])
    bucket = np.array([next(i for i, b in enumerate(bounds) if n <= b) for n in lengths])
    expected = [4] * 4
    for i in set(bucket.tolist()):
        expected[i] = max(1, round(4 * lengths.mean() / lengths[bucket == i].mean()))
    assert bucket_batch_sizes(varied, "train", "all_positions", 4, 8, bounds) == expected
    assert expected[0] > 4 > expected[2]
    # One loss per example elsewhere: plain batch sizes.
    assert bucket_batch_sizes(varied, "train", "prefix", 4, 8, bounds) == [4] * 4
    bucketed = make_dataset(varied, "train", batch_size=4, shuffle=False, bucket_boundaries=bounds)
    for x, _ in bucketed:
        real = (x["item_ids"].numpy() != 0).sum(axis=1)
        assert len(real) <= expected[bounds.index(next(b for b in bounds if real.max() <= b))]
    assert int(bucketed.cardinality()) == sum(1 for _ in bucketed)


def test_cache_keeps_finished_eval_batches_and_training_reshuffles(varied, tmp_path):
    import shutil

    copy = PreparedDataset.open(shutil.copytree(varied.directory, tmp_path / "copy"))
    kwargs = {"objective": "eval", "batch_size": 3, "bucket_boundaries": [2, 5, 8]}
    plain = batches(make_dataset(varied, "valid", **kwargs))
    cached = make_dataset(copy, "valid", cache=True, **kwargs)
    assert batches(cached) == plain
    # The second pass reads the cache, not the files.
    for path in copy.files("valid"):
        os.remove(path)
    assert batches(cached) == plain

    train = make_dataset(varied, "train", objective="all_positions", batch_size=4, seed=3, cache=True)
    first, second = batches(train), batches(train)
    assert first != second
    assert _examples(train) == _examples(make_dataset(varied, "train", objective="all_positions", batch_size=4, seed=3))


def test_cached_evaluation_batches_run_without_autotuning(varied):
    cached = make_dataset(varied, "valid", batch_size=4, bucket_boundaries="auto", cache=True)
    assert cached.options().autotune.enabled is False
    first, second = _examples(cached), _examples(cached)  # the second pass reads the cache
    assert first == second == _examples(make_dataset(varied, "valid", batch_size=4, bucket_boundaries="auto"))
    # Training pipelines keep it: their parse and batching stages run every epoch.
    assert make_dataset(varied, "train", batch_size=4).options().autotune.enabled is not False


def test_all_targets_windows_keep_history_by_hand(tmp_path):
    """One user of 10 events: a training record of 8 events (e0..e7, targets 1..7), windows of 4 events ending
    every 2 targets. Each window trains on its newest 2 slots; the oldest on all of its slots."""
    import pandas as pd

    from tfsidefuse.data.pipeline import target_windows
    from tfsidefuse.data.raw_dataset import RawDataset

    frame = pd.DataFrame({"user": ["u"] * 10, "item": [f"i{t}" for t in range(10)], "time": range(10)})
    prepared = PreparedDataset.open(write_prepared(encode(RawDataset("one", frame), max_len=4), tmp_path / "one"))
    ids = {token: i for i, token in enumerate(prepared.vocabulary("item_id"))}
    e = [ids[f"i{t}"] for t in range(10)]
    assert target_windows(7, 4) == [(6, 7, 2), (4, 5, 2), (1, 3, 0)]
    got = batches(make_dataset(prepared, "train", objective="all_targets", batch_size=8, shuffle=False))
    rows = sorted((tuple(x), tuple(y)) for batch, labels in got for x, y in zip(batch["item_ids"], labels))
    assert rows == sorted(
        [
            ((e[3], e[4], e[5], e[6]), (0, 0, e[6], e[7])),
            ((e[1], e[2], e[3], e[4]), (0, 0, e[4], e[5])),
            ((0, e[0], e[1], e[2]), (0, e[1], e[2], e[3])),
        ]
    )
    # `all_positions` trains on the newest window's 4 slots only.
    ((x, y),) = batches(make_dataset(prepared, "train", objective="all_positions", batch_size=8, shuffle=False))
    assert (tuple(x["item_ids"][0]), tuple(y[0])) == ((e[3], e[4], e[5], e[6]), (e[4], e[5], e[6], e[7]))


@pytest.mark.parametrize("max_len", [3, 5, 8])
def test_all_targets_trains_on_every_prefix_target_once(varied, max_len):
    """The targets of one `all_targets` epoch are exactly the prefix objective's, counted with multiplicity."""

    def targets(objective):
        ds = make_dataset(varied, "train", objective=objective, batch_size=7, max_len=max_len, shuffle=True, seed=1)
        out = []
        for _, y in ds:
            y = y.numpy()
            out.extend(int(v) for v in y.ravel() if v)
        return sorted(out), int(ds.cardinality())

    windows, declared = targets("all_targets")
    prefixes, _ = targets("prefix")
    last_only, _ = targets("all_positions")
    assert windows == prefixes
    assert len(last_only) < len(windows)  # sequences longer than max_len + 1 exist in the fixture
    assert declared == count_batches(varied, "train", "all_targets", 7, max_len)
    step = max_len // 2
    assert count_examples(varied, "train", "all_targets", max_len) == sum(
        1 + max(0, -(-(n - 3 - max_len) // step)) for n in (3 + u % 18 for u in range(40)) if n - 3 >= 1
    )


def test_all_targets_covers_every_movielens_target(tmp_path):
    """MovieLens-100K (long histories): the loss at the last max_len = 50 positions trains on 38,762 of the
    97,171 targets of the prefix objective; `all_targets` on all of them, in 3,564 windows."""
    from helpers import shared_data

    from tfsidefuse.data.readers import read_recbole

    raw = read_recbole(shared_data("ml-100k"), name="ml-100k")
    prepared = PreparedDataset.open(write_prepared(encode(raw, max_len=50), tmp_path / "ml"))

    def counted(objective):
        examples = targets = 0
        for _, y in make_dataset(prepared, "train", objective=objective, batch_size=1024, shuffle=False):
            examples += int(y.shape[0])
            targets += int(np.count_nonzero(y.numpy()))
        return examples, targets

    assert counted("all_positions") == (943, 38762)
    assert counted("all_targets") == (3564, 97171)
    assert counted("prefix") == (97171, 97171)


def test_file_shards_split_the_examples_between_workers(varied):
    """`file_shard=(workers, index)`: each worker reads its own shard files; together every example once, no count
    declared (the statistics count every file)."""
    whole = _examples(make_dataset(varied, "train", objective="all_positions", batch_size=4, shuffle=False))
    parts = [
        make_dataset(varied, "train", objective="all_positions", batch_size=4, shuffle=False, file_shard=(2, i))
        for i in range(2)
    ]
    examples = [_examples(p) for p in parts]
    assert examples[0] and examples[1]
    assert sorted(examples[0] + examples[1]) == whole
    assert all(p.cardinality().numpy() == tf.data.UNKNOWN_CARDINALITY for p in parts)
    options = parts[0].options().experimental_distribute.auto_shard_policy
    assert options == tf.data.experimental.AutoShardPolicy.OFF
