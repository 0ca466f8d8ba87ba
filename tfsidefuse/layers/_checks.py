"""Eager constructor-argument checks shared by the layers and backbones.

Every check raises `ValueError` with a message that names the argument and
repeats the received value, e.g. "`ff_dim` must be a positive int. Received:
ff_dim=0".
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import keras


def is_positive_int(value: Any, *, allow_bool: bool = True) -> bool:
    """Whether `value` is an int `>= 1`; `allow_bool=False` also rejects `True` (an int equal to 1)."""
    return isinstance(value, int) and (allow_bool or not isinstance(value, bool)) and value >= 1


def check_positive_int(name: str, value: Any, *, allow_bool: bool = True) -> None:
    """Raises unless `value` is a positive int (see `is_positive_int`)."""
    if not is_positive_int(value, allow_bool=allow_bool):
        raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")


def check_positive(name: str, value: Any) -> None:
    """Raises unless `value > 0`."""
    if not value > 0:
        raise ValueError(f"`{name}` must be positive. Received: {name}={value!r}")


def check_rate(name: str, value: Any) -> None:
    """Raises unless `value` is a dropout rate (a number, not a bool) in `[0, 1)`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value!r}")


def check_seed(seed: Any) -> None:
    """Raises unless `seed` is an int or `None` (`True` and `False` are not seeds)."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"`seed` must be an int or None. Received: seed={seed!r}")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raises unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}. Received: {name}={value!r}")


def check_heads(num_heads: Any, hidden_dim: int) -> None:
    """Raises unless `num_heads` is a positive int dividing the (valid) `hidden_dim`."""
    if not is_positive_int(num_heads) or hidden_dim % num_heads != 0:
        raise ValueError(
            f"`num_heads` must be a positive int dividing `hidden_dim`. "
            f"Received: num_heads={num_heads!r}, hidden_dim={hidden_dim}"
        )


def check_transformer_args(
    hidden_dim: int,
    num_heads: Any,
    ff_dim: Any,
    dropout: Any,
    attention_dropout: Any,
    layer_norm_epsilon: Any,
) -> None:
    """Checks the arguments of a stack of `TransformerBlock`s, in this order.

    `hidden_dim` must already be a valid positive int; it is only used to
    check that `num_heads` divides it.
    """
    check_heads(num_heads, hidden_dim)
    check_positive_int("ff_dim", ff_dim)
    check_rate("dropout", dropout)
    check_rate("attention_dropout", attention_dropout)
    check_positive("layer_norm_epsilon", layer_norm_epsilon)


def get_initializer(initializer: Any) -> keras.initializers.Initializer:
    """`keras.initializers.get(initializer)`, where `None` gives `N(0, 0.02)`, as RecBole."""
    if initializer is None:
        initializer = keras.initializers.RandomNormal(stddev=0.02)
    return keras.initializers.get(initializer)


def rename_config_keys(config: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    """A copy of a saved config with its old argument names replaced by the current ones.

    Args:
        config: the config dict of a saved layer or model.
        renames: old name -> current name; a current name already in
            `config` wins over its old one.

    Returns:
        The renamed copy.
    """
    config = dict(config)
    for old, new in renames.items():
        if old in config:
            value = config.pop(old)
            config.setdefault(new, value)
    return config
