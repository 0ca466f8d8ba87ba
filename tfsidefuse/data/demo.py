"""A small synthetic dataset in which side information measurably helps next-item prediction.

The generator is a Markov process over (category, brand, action):

* every item belongs to one category and one brand; a brand sells in a few categories;
* the next item's category depends on the current category and on the current action
  ("view": the user keeps browsing the same category, "cart": mostly the same category or a
  related one, "buy": the user moves on to a complementary category), through sparse
  transition matrices;
* the brand tends to persist (brand loyalty) when the brand sells in the next category;
* within a category (and brand), items are drawn with a Zipf-like popularity, so that many
  items are rare: their ids are hard to learn, but their category and brand are informative;
  an immediate repeat of the previous item is redrawn once, so that repeating the last item is
  not a shortcut.

Everything is drawn from one ``numpy.random.Generator`` seeded by ``seed``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tfsidefuse.data.raw_dataset import ITEM, TIME, USER, RawDataset
from tfsidefuse.data.schema import FeatureSpec

__all__ = ["ACTIONS", "make_demo_dataset"]

#: Interaction-level tokens of the ``action`` feature.
ACTIONS: tuple[str, ...] = ("view", "cart", "buy")
_ACTION_PROBS = np.array([0.6, 0.25, 0.15])

# Probability of staying in the same category after each action.
_STAY = {"view": 0.85, "cart": 0.5, "buy": 0.05}
# After "buy": probability of moving to a complementary category (the rest goes to related ones).
_BUY_TO_COMPLEMENT = 0.85
_BRAND_LOYALTY = 0.7
_ZIPF_EXPONENT = 1.0
_MIN_LEN, _MAX_LEN, _MEAN_EXTRA_LEN = 5, 30, 7.0
_START_TIME = 1_600_000_000


def _cdf(weights: np.ndarray) -> np.ndarray:
    c = np.cumsum(weights, axis=-1)
    return c / c[..., -1:]


def _transitions(rng: np.random.Generator, num_categories: int) -> dict[str, np.ndarray]:
    """Row-stochastic category transition matrices, one per action."""
    c = num_categories
    others = [np.delete(np.arange(c), k) for k in range(c)]
    related = np.zeros((c, c))
    complement = np.zeros((c, c))
    for k in range(c):
        if c == 1:
            break
        n_rel = min(3, c - 1)
        rel = rng.choice(others[k], size=n_rel, replace=False)
        related[k, rel] = rng.dirichlet(np.ones(n_rel))
        n_comp = min(2, c - 1)
        comp = rng.choice(others[k], size=n_comp, replace=False)
        complement[k, comp] = rng.dirichlet(np.full(n_comp, 2.0))
    eye = np.eye(c)
    if c == 1:
        return {a: eye for a in ACTIONS}
    return {
        "view": _STAY["view"] * eye + (1 - _STAY["view"]) * related,
        "cart": _STAY["cart"] * eye + (1 - _STAY["cart"]) * related,
        "buy": _STAY["buy"] * eye
        + (1 - _STAY["buy"]) * (_BUY_TO_COMPLEMENT * complement + (1 - _BUY_TO_COMPLEMENT) * related),
    }


def make_demo_dataset(
    num_users: int = 3000,
    num_items: int = 600,
    num_categories: int = 12,
    num_brands: int = 40,
    seed: int = 0,
) -> RawDataset:
    """Builds a synthetic next-item dataset whose side features carry real signal.

    Args:
        num_users: number of users (one sequence each).
        num_items: number of items; each belongs to one category and one brand.
        num_categories: number of item categories (at most ``num_items``).
        num_brands: number of brands.
        seed: seed of the random generator; the same arguments give the same dataset.

    Returns:
        A :class:`RawDataset` named ``"demo"``: interactions ``user`` (``"u0"``...), ``item``
        (``"i0"``...), ``time`` (int64 seconds, increasing within a user), ``action``
        (``"view"``/``"cart"``/``"buy"``), rows grouped by user in chronological order; items
        ``item``, ``category`` (``"c00"``...), ``brand`` (``"b000"``...). Features: ``category``
        and ``brand`` (item level, categorical), ``action`` (interaction level, categorical).
        Sequence lengths are between 5 and 30 (mean about 12).

    Raises:
        ValueError: a non-positive size or more categories than items.
    """
    for arg, value in (
        ("num_users", num_users),
        ("num_items", num_items),
        ("num_categories", num_categories),
        ("num_brands", num_brands),
    ):
        if int(value) < 1:
            raise ValueError(f"make_demo_dataset: {arg} must be >= 1, got {value!r}")
    if num_categories > num_items:
        raise ValueError(
            f"make_demo_dataset: num_categories ({num_categories}) must not exceed num_items ({num_items})"
        )
    rng = np.random.default_rng(seed)

    # --- catalogue -----------------------------------------------------------------------------------------------
    # Every category gets at least one item; each brand sells in 1-3 categories.
    item_cat = np.concatenate([np.arange(num_categories), rng.integers(0, num_categories, num_items - num_categories)])
    item_cat = rng.permutation(item_cat)
    brand_cats = [
        rng.choice(num_categories, size=min(num_categories, int(rng.integers(1, 4))), replace=False)
        for _ in range(num_brands)
    ]
    brands_of_cat: list[list[int]] = [[] for _ in range(num_categories)]
    for b, cats in enumerate(brand_cats):
        for k in cats:
            brands_of_cat[k].append(b)
    for k in range(num_categories):
        if not brands_of_cat[k]:  # a category nobody sells in gets a random brand
            brands_of_cat[k].append(int(rng.integers(num_brands)))
    item_brand = np.array([rng.choice(brands_of_cat[k]) for k in item_cat], dtype=np.int64)

    # Zipf-like popularity within each category: the rank is a random order of the category's items.
    popularity = np.empty(num_items)
    cat_items, cat_cdf = [], []
    for k in range(num_categories):
        members = np.flatnonzero(item_cat == k)
        ranks = rng.permutation(len(members)) + 1
        popularity[members] = ranks.astype(float) ** -_ZIPF_EXPONENT
        cat_items.append(members)
        cat_cdf.append(_cdf(popularity[members]))
    cb_items: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for k in range(num_categories):
        members = cat_items[k]
        for b in np.unique(item_brand[members]):
            sel = members[item_brand[members] == b]
            cb_items[(k, int(b))] = (sel, _cdf(popularity[sel]))

    trans = _transitions(rng, num_categories)
    trans_cdf = np.stack([_cdf(trans[a]) for a in ACTIONS])  # [action, from, to]
    start_cdf = _cdf(rng.dirichlet(np.full(num_categories, 2.0)))
    action_cdf = _cdf(_ACTION_PROBS)

    # --- sequences -----------------------------------------------------------------------------------------------
    extra = np.minimum(rng.geometric(1.0 / (_MEAN_EXTRA_LEN + 1), num_users) - 1, _MAX_LEN - _MIN_LEN)
    lengths = (_MIN_LEN + extra).astype(np.int64)
    total = int(lengths.sum())
    # Pre-drawn uniforms per event: category, loyalty, item, item retry (no immediate repeat), action.
    u_cat, u_loyal, u_item, u_retry, u_action = rng.random((5, total))
    actions = np.searchsorted(action_cdf, u_action, side="right").astype(np.int64)
    items = np.empty(total, dtype=np.int64)

    pos = 0
    for length in lengths:
        cat = -1
        brand = -1
        for t in range(pos, pos + int(length)):
            if cat < 0:
                cat = int(np.searchsorted(start_cdf, u_cat[t], side="right"))
            else:
                cat = int(np.searchsorted(trans_cdf[actions[t - 1], cat], u_cat[t], side="right"))
            pool = cb_items.get((cat, brand)) if brand >= 0 and u_loyal[t] < _BRAND_LOYALTY else None
            members, cdf = pool if pool is not None else (cat_items[cat], cat_cdf[cat])
            item = int(members[min(int(np.searchsorted(cdf, u_item[t], side="right")), len(members) - 1)])
            if t > pos and item == items[t - 1]:
                if len(members) == 1 and len(cat_items[cat]) > 1:
                    members, cdf = cat_items[cat], cat_cdf[cat]
                item = int(members[min(int(np.searchsorted(cdf, u_retry[t], side="right")), len(members) - 1)])
            items[t] = item
            brand = int(item_brand[item])
        pos += int(length)

    # Time: a start per user, then log-normal gaps (longer after a purchase).
    starts = _START_TIME + rng.integers(0, 90 * 86400, num_users)
    gaps = np.exp(rng.normal(np.log(300.0), 1.5, total))
    gaps = np.where(actions == ACTIONS.index("buy"), gaps * 50.0, gaps)
    gaps = np.maximum(1, gaps.astype(np.int64))
    user_index = np.repeat(np.arange(num_users), lengths)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    # The gap before event t is drawn from the action at t-1; the first event of a user has no gap.
    gap_before = np.concatenate([[0], gaps[:-1]])
    gap_before[first] = 0
    cum = np.cumsum(gap_before)
    time = starts[user_index] + cum - cum[first][user_index]

    user_tokens = np.array([f"u{i}" for i in range(num_users)], dtype=object)
    item_tokens = np.array([f"i{i}" for i in range(num_items)], dtype=object)
    cat_width = len(str(num_categories - 1))
    brand_width = max(3, len(str(num_brands - 1)))
    interactions = pd.DataFrame(
        {
            USER: user_tokens[user_index],
            ITEM: item_tokens[items],
            TIME: time.astype(np.int64),
            "action": np.array(ACTIONS, dtype=object)[actions],
        }
    )
    items_df = pd.DataFrame(
        {
            ITEM: item_tokens,
            "category": np.array([f"c{k:0{max(2, cat_width)}d}" for k in item_cat], dtype=object),
            "brand": np.array([f"b{b:0{brand_width}d}" for b in item_brand], dtype=object),
        }
    )
    features = [
        FeatureSpec("category", "item", "categorical"),
        FeatureSpec("brand", "item", "categorical"),
        FeatureSpec("action", "interaction", "categorical"),
    ]
    return RawDataset(name="demo", interactions=interactions, items=items_df, features=features)
