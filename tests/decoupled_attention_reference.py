"""Plain-numpy reference of `DecoupledAttention` (docs/models.md#difsr), shared by the layer and DIF-SR tests."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from helpers import np_dense, np_softmax


def np_decoupled_attention(
    layer: Any, items: np.ndarray, attributes: list[np.ndarray], positions: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`(output, probabilities)` of a `DecoupledAttention` at inference, from its weights.

    docs/models.md#difsr, written per window on RecBole's right-padded layout.

    The real keys of each window are moved to the front (position `q` = the
    `q`-th real key), the disallowed scores are zeroed, concat and gate act on
    the position-indexed rows of length `max_len` exactly as the official
    layers, and the fused row is put back at the keys' slots.
    """
    h = layer.num_heads
    items, positions = items.astype("float64"), positions.astype("float64")

    def scores(query_dense, key_dense, x, width):
        def split(y):
            b, t, _ = y.shape
            return y.reshape(b, t, h, width).transpose(0, 2, 1, 3)

        q, k = split(np_dense(query_dense, x)), split(np_dense(key_dense, x))
        return q @ k.transpose(0, 1, 3, 2)

    sources = [
        scores(qd, kd, a.astype("float64"), w)
        for qd, kd, a, w in zip(
            layer.attribute_query_denses, layer.attribute_key_denses, attributes, layer.attribute_head_dims
        )
    ]
    sources.append(scores(layer.query_dense, layer.key_dense, items, layer.head_dim))
    sources.append(scores(layer.position_query_dense, layer.position_key_dense, positions, layer.head_dim))
    batch, _, length, _ = sources[0].shape
    fused = np.zeros_like(sources[0])
    for b in range(batch):
        allowed = mask[b]  # [query, key]
        slots = np.flatnonzero(allowed.any(axis=0))
        premasked = [s[b] * allowed[None] for s in sources]  # [heads, query, key]
        if layer.fusion == "sum":
            fused[b] = sum(s[b] for s in sources)
            continue
        rows = []
        for s in premasked:
            row = np.zeros((h, length, layer.max_len))
            row[:, :, : len(slots)] = s[:, :, slots]
            rows.append(row)
        fusion = layer.score_fusion
        if layer.fusion == "concat":
            row = np_dense(fusion.projection, np.concatenate(rows, axis=-1))
            fused[b][:, :, slots] = row[:, :, : len(slots)]
        else:
            hidden_kernel = np.asarray(fusion.gate_hidden_dense.kernel)
            hidden_bias = np.asarray(fusion.gate_hidden_dense.bias)
            output_kernel = np.asarray(fusion.gate_output_dense.kernel)[:, 0]
            energies = np.stack([np.maximum(r @ hidden_kernel + hidden_bias, 0.0) @ output_kernel for r in rows], -1)
            gates = np_softmax(energies)  # [heads, query, sources]
            fused[b] = sum(gates[..., k, None] * s for k, s in enumerate(premasked))
    fused = fused / math.sqrt(layer.head_dim) + (1.0 - mask[:, None].astype("float64")) * -10000.0
    probabilities = np_softmax(fused)
    values = np_dense(layer.value_dense, items).reshape(batch, length, h, layer.head_dim).transpose(0, 2, 1, 3)
    context = (probabilities @ values).transpose(0, 2, 1, 3).reshape(batch, length, layer.hidden_dim)
    return np_dense(layer.attention_output_dense, context), probabilities
