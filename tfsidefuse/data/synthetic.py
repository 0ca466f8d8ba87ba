"""Synthetic logs of any size: power-law item popularity, attributes that shape the transitions.

The demo data (:mod:`tfsidefuse.data.demo`) walks each user event by event in Python, which suits a few thousand
users. This generator draws the same kind of log with numpy only, one step of all users at a time, so that a
million users with ten events each take well under a minute and a few hundred megabytes:

* every item has one category and one brand; each brand sells in one category (brand ``b`` in category
  ``b mod num_categories``), so the attribute vocabulary has ``num_categories + num_brands`` entries;
* item popularity follows a power law: the item of popularity rank ``r`` (1 = most popular; ranks are a random
  order of the item ids) has weight ``r ** -exponent``;
* the first event of a user is an item drawn by weight; each next event first moves the category: it stays with
  probability ``stay``, otherwise a neighbour on a ring of the categories (one or two places away) is proposed
  and accepted with probability ``min(1, W_new / W_old)`` (``W``: the categories' total item weight), else the
  category stays;
* in the same category the next item keeps the brand with probability ``loyalty`` (an item of that brand, by
  weight), otherwise it is any item of the category, by weight; in a new category it is any item of it, by weight.

The category walk is a Metropolis chain whose stationary law is ``W_c / W``, the law of the first event, and
within a category (and brand) items are drawn by weight: every event's item is therefore drawn with probability
exactly ``weight / total weight``, the power law of ``exponent``, while consecutive items share their category
far more often than chance and their brand more often still. The price of the exact law is that an item may follow
itself: where one item holds most of its brand's weight, the loyal draw often repeats it (the demo data redraws
repeats instead, and its popularity law is therefore only approximate). Lengths are ``3 + Geometric`` with mean
``mean_length`` (3 is the fewest events a leave-one-out split keeps).

:meth:`SyntheticLog.write_recbole` writes the log as RecBole atomic files (``<name>.inter``: users and items;
``<name>.item``: each item's ``category`` and ``brand``), which ``prepare`` reads with ``dataset.source:
recbole`` in time linear in the number of events and items. Users and items are numbered from 1. Every array is
drawn from one ``numpy.random.Generator`` seeded by ``seed``.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from tfsidefuse.errors import ConfigError

__all__ = ["MIN_LENGTH", "SyntheticLog", "make_synthetic_log", "write_synthetic_dataset"]

#: Fewest events of a user (a leave-one-out split needs 3).
MIN_LENGTH = 3
#: Ring offsets between a category and the categories a move may propose.
_NEIGHBOURS = np.array([-2, -1, 1, 2])
_INFO = "synthetic.json"


@dataclasses.dataclass(frozen=True)
class SyntheticLog:
    """A generated log: each user's events in order, and each item's category and brand.

    Attributes:
        lengths: int64 ``[num_users]``, events per user (user ``u`` is numbered ``u + 1`` in files).
        items: int64 ``[num_events]``, item ids ``1 .. num_items``, the users' events one user after the other.
        item_category: int64 ``[num_items]``, the category (``0 .. num_categories - 1``) of item id ``i + 1``.
        item_brand: int64 ``[num_items]``, the brand (``0 .. num_brands - 1``) of item id ``i + 1``.
        item_rank: int64 ``[num_items]``, the popularity rank (1 = most popular) of item id ``i + 1``.
        arguments: the arguments it was generated with.
    """

    lengths: np.ndarray
    items: np.ndarray
    item_category: np.ndarray
    item_brand: np.ndarray
    item_rank: np.ndarray
    arguments: dict

    @property
    def num_users(self) -> int:
        return len(self.lengths)

    @property
    def num_items(self) -> int:
        return len(self.item_category)

    @property
    def num_events(self) -> int:
        return len(self.items)

    def item_probabilities(self) -> np.ndarray:
        """float64 ``[num_items]``: P(an event is item id ``i + 1``), in proportion to ``rank ** -exponent``."""
        weights = self.item_rank.astype(np.float64) ** -float(self.arguments["exponent"])
        return weights / weights.sum()

    def write_recbole(self, directory: str | os.PathLike) -> str:
        """Writes the log as RecBole atomic files, which ``prepare`` reads with ``dataset.source: recbole``.

        Files, named after the directory (``<directory>/<name>.inter`` for a directory called ``<name>``, the
        stem ``prepare`` looks for by default):

        - ``<name>.inter``: ``user_id:token`` and ``item_id:token``, one event per line, each user's events
          together and in order (no timestamp: the file order is the order of events);
        - ``<name>.item``: ``item_id:token``, ``category:token`` (``c0``, ``c1``, ..) and ``brand:token``
          (``b0``, ..) of every item of the catalogue, the item-level features ``category`` and ``brand``;
        - ``synthetic.json``: the arguments and sizes.

        Existing files of these names are replaced.

        Returns:
            The directory.
        """
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        stem = os.path.join(directory, os.path.basename(os.path.abspath(directory)))
        offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        chunk = 100_000
        with open(f"{stem}.inter", "w") as fh:
            fh.write("user_id:token\titem_id:token\n")
            for first in range(0, self.num_users, chunk):
                last = min(first + chunk, self.num_users)
                users = np.repeat(np.arange(first + 1, last + 1), self.lengths[first:last]).tolist()
                items = self.items[offsets[first] : offsets[last]].tolist()
                fh.write("".join(f"{u}\t{i}\n" for u, i in zip(users, items)))
        with open(f"{stem}.item", "w") as fh:
            fh.write("item_id:token\tcategory:token\tbrand:token\n")
            rows = zip(self.item_category.tolist(), self.item_brand.tolist())
            fh.write("".join(f"{i}\tc{c}\tb{b}\n" for i, (c, b) in enumerate(rows, start=1)))
        info = {
            "generator": "tfsidefuse.data.synthetic.make_synthetic_log",
            "arguments": self.arguments,
            "users": self.num_users,
            "items": self.num_items,
            "events": self.num_events,
            "attribute_vocabulary": int(self.arguments["num_categories"]) + int(self.arguments["num_brands"]),
        }
        with open(os.path.join(directory, _INFO), "w") as fh:
            json.dump(info, fh, indent=2)
        return directory


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"make_synthetic_log: {name} must be an int >= {minimum}, got {name}={value!r}")
    return int(value)


def _check_number(name: str, value, low: float, high: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"make_synthetic_log: {name} must be a number {what}, got {name}={value!r}")
    if not (np.isfinite(value) and low <= value <= high):
        raise ConfigError(f"make_synthetic_log: {name} must be {what}, got {name}={value!r}")
    return float(value)


def _segments(keys: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last positions of each key ``0 .. count - 1`` in sorted ``keys``."""
    return np.searchsorted(keys, np.arange(count), side="left"), np.searchsorted(keys, np.arange(count), side="right")


def make_synthetic_log(
    num_users: int = 10_000,
    num_items: int = 10_000,
    num_categories: int = 100,
    num_brands: int = 1_000,
    mean_length: float = 10.0,
    exponent: float = 1.0,
    stay: float = 0.5,
    loyalty: float = 0.5,
    seed: int = 0,
) -> SyntheticLog:
    """Generates a log of ``num_users`` users over ``num_items`` items (see the module's docstring).

    Args:
        num_users: users, one sequence each.
        num_items: items in the catalogue (ids ``1 .. num_items``); items never drawn do not appear in the log.
        num_categories: item categories (at most ``num_items``); each has at least one item.
        num_brands: brands (at least ``num_categories``); brand ``b`` sells in category ``b mod num_categories``.
        mean_length: mean events per user (at least 3).
        exponent: power-law exponent of item popularity (0: uniform).
        stay: probability that the next event stays in the category before a move is proposed, in ``[0, 1]``.
        loyalty: probability that an event in the same category keeps the previous item's brand, in ``[0, 1]``.
        seed: seed of the random generator; the same arguments give the same log.

    Returns:
        A :class:`SyntheticLog`.

    Raises:
        ConfigError: an argument out of range; the message names it and its value.
    """
    num_users = _check_int("num_users", num_users, 1)
    num_items = _check_int("num_items", num_items, 1)
    num_categories = _check_int("num_categories", num_categories, 1)
    num_brands = _check_int("num_brands", num_brands, 1)
    seed = _check_int("seed", seed, 0)
    if num_categories > num_items:
        raise ConfigError(
            f"make_synthetic_log: num_categories must not exceed num_items={num_items}, "
            f"got num_categories={num_categories}"
        )
    if num_brands < num_categories:
        raise ConfigError(
            f"make_synthetic_log: num_brands must be at least num_categories={num_categories} (every category has "
            f"its own brands), got num_brands={num_brands}"
        )
    mean_length = _check_number("mean_length", mean_length, MIN_LENGTH, 1e6, f"in [{MIN_LENGTH}, 1e6]")
    exponent = _check_number("exponent", exponent, 0.0, 10.0, "in [0, 10]")
    stay = _check_number("stay", stay, 0.0, 1.0, "in [0, 1]")
    loyalty = _check_number("loyalty", loyalty, 0.0, 1.0, "in [0, 1]")
    arguments = {
        "num_users": num_users,
        "num_items": num_items,
        "num_categories": num_categories,
        "num_brands": num_brands,
        "mean_length": mean_length,
        "exponent": exponent,
        "stay": stay,
        "loyalty": loyalty,
        "seed": seed,
    }
    rng = np.random.default_rng(seed)

    # --- catalogue: categories (each non-empty), brands of the item's category, popularity ranks -------------------
    category = rng.integers(0, num_categories, num_items)
    category[rng.permutation(num_items)[:num_categories]] = np.arange(num_categories)
    brands_in_category = (num_brands - 1 - np.arange(num_categories)) // num_categories + 1
    brand = category + num_categories * np.floor(rng.random(num_items) * brands_in_category[category]).astype(np.int64)
    rank = rng.permutation(num_items).astype(np.int64) + 1
    weight = rank.astype(np.float64) ** -exponent

    # Items sorted by (category, brand): a category's and a brand's items are contiguous, so drawing an item of
    # either by weight is one search in the running sum of the weights.
    order = np.lexsort((brand, category))
    sorted_category, sorted_brand = category[order], brand[order]
    cumulative = np.concatenate([[0.0], np.cumsum(weight[order])])
    cat_first, cat_last = _segments(sorted_category, num_categories)
    brand_sorted = np.argsort(sorted_brand, kind="stable")  # positions of the sorted items, by brand
    brand_first_in, brand_last_in = _segments(sorted_brand[brand_sorted], num_brands)
    # Brands are nested in categories, so a brand's items are also contiguous in `order`.
    brand_first = np.where(brand_last_in > brand_first_in, brand_sorted[np.minimum(brand_first_in, num_items - 1)], 0)
    brand_last = brand_first + (brand_last_in - brand_first_in)
    category_weight = cumulative[cat_last] - cumulative[cat_first]

    def draw(first: np.ndarray, last: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Sorted positions drawn by weight within ``[first, last)``."""
        low, high = cumulative[first], cumulative[last]
        found = np.searchsorted(cumulative, low + u * (high - low), side="right") - 1
        return np.clip(found, first, last - 1)

    # --- sequences: lengths, then one step of every user that is still active at a time --------------------------
    extra = rng.geometric(1.0 / (mean_length - MIN_LENGTH + 1.0), num_users) - 1
    lengths = (MIN_LENGTH + extra).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    by_length = np.argsort(-lengths, kind="stable")  # the active users of a step are a prefix of it
    # Users with more than `step` events, for step = 0, 1, ..
    active_count = np.bincount(lengths, minlength=int(lengths.max()) + 1)[::-1].cumsum()[::-1][1:]
    positions = np.empty(int(lengths.sum()), dtype=np.int64)  # sorted item positions, later item ids

    users = by_length[: active_count[0]]
    current = draw(np.zeros(len(users), np.int64), np.full(len(users), num_items), rng.random(len(users)))
    positions[starts[users]] = current
    for step in range(1, len(active_count)):
        n = int(active_count[step])
        users = by_length[:n]
        previous = current[:n]
        u_stay, u_propose, u_accept, u_loyal, u_item = rng.random((5, n))
        old = sorted_category[previous]
        proposed = (old + _NEIGHBOURS[np.minimum((u_propose * 4).astype(np.int64), 3)]) % num_categories
        accept = u_accept * category_weight[old] < category_weight[proposed]
        new = np.where((u_stay >= stay) & accept, proposed, old)
        same = new == old
        keep_brand = same & (u_loyal < loyalty)
        old_brand = sorted_brand[previous]
        first = np.where(keep_brand, brand_first[old_brand], cat_first[new])
        last = np.where(keep_brand, brand_last[old_brand], cat_last[new])
        current = draw(first, last, u_item)
        positions[starts[users] + step] = current
    items = order[positions] + 1
    return SyntheticLog(
        lengths=lengths,
        items=items.astype(np.int64),
        item_category=category.astype(np.int64),
        item_brand=brand.astype(np.int64),
        item_rank=rank,
        arguments=arguments,
    )


def write_synthetic_dataset(directory: str | os.PathLike, **arguments) -> SyntheticLog:
    """Generates a log (:func:`make_synthetic_log` with ``arguments``) and writes it to ``directory`` (RecBole files).

    ``prepare`` then reads it with ``dataset: {source: recbole, path: <directory>}``; its item-level features
    are ``category`` and ``brand``.
    """
    log = make_synthetic_log(**arguments)
    log.write_recbole(directory)
    return log
