"""Attention probabilities of any backbone, captured without touching model code.

Every backbone stacks :class:`~tfsidefuse.layers.TransformerBlock`s, whose
attention sublayer is ``block.self_attention`` (the default
:class:`~tfsidefuse.layers.SelfAttention` or a model's own attention layer).
:func:`capture_attention` temporarily replaces that sublayer's ``call`` on the
instance by a wrapper that asks for ``return_attention_scores=True``, records
the probabilities ``[batch, heads, queries, keys]`` and returns the plain
output, so the forward pass is unchanged. The original ``call`` is restored on
exit, also after an error.

Attention layers whose ``call`` has no ``return_attention_scores`` argument
cannot report their probabilities; they are skipped with a warning that names
them, and :attr:`AttentionCapture.skipped` lists them.

With ``unmasked=True`` the wrapper calls the attention a second time with
``attention_mask=None`` and records those probabilities too: the softmax of the
full score matrix (future and padded keys included), from which
:mod:`tfsidefuse.analysis.rank` recovers the logits up to a constant per row.
A layer that fails without a mask is logged and has no unmasked record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from tfsidefuse.layers.transformer_block import TransformerBlock

logger = logging.getLogger(__name__)

RETURN_SCORES_ARG = "return_attention_scores"


def transformer_blocks(layer: keras.layers.Layer) -> list[TransformerBlock]:
    """The ``TransformerBlock``s inside a layer (or the layer itself), in creation order."""
    return [
        sub for sub in layer._flatten_layers(include_self=True, recursive=True) if isinstance(sub, TransformerBlock)
    ]


def reports_attention(attention: keras.layers.Layer) -> bool:
    """Whether an attention layer's ``call`` takes ``return_attention_scores`` as a named argument."""
    return RETURN_SCORES_ARG in inspect.signature(attention.call).parameters


@dataclasses.dataclass
class AttentionCapture:
    """What :func:`capture_attention` records, one entry per call of each captured attention layer.

    Attributes:
        layer_names: names of the captured blocks' attention layers, in block order
            (``"<block name>/<attention name>"``).
        probabilities: per captured block, the list of float32 arrays
            ``[batch, heads, queries, keys]`` recorded by successive calls (with the
            mask the model used).
        unmasked: per captured block, the probabilities of the same calls without
            attention mask (only filled with ``unmasked=True``).
        skipped: ``"<block name>/<attention name> (<class>)"`` of the blocks whose
            attention layer cannot return its probabilities.
    """

    layer_names: list[str] = dataclasses.field(default_factory=list)
    probabilities: list[list[np.ndarray]] = dataclasses.field(default_factory=list)
    unmasked: list[list[np.ndarray]] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)

    def latest(self, masked: bool = True) -> list[np.ndarray | None]:
        """The probabilities of each captured block's most recent call (None where nothing was recorded)."""
        source = self.probabilities if masked else self.unmasked
        return [calls[-1] if calls else None for calls in source]


def _to_numpy(x: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float32)


@contextlib.contextmanager
def capture_attention(layer: keras.layers.Layer, *, unmasked: bool = False) -> Iterator[AttentionCapture]:
    """Records the attention probabilities of every ``TransformerBlock`` of a built layer.

    Calls must run eagerly (call the backbone directly, not through a compiled
    ``predict``): a traced function would record symbolic tensors.

    Args:
        layer: a built backbone (or any layer holding transformer blocks).
        unmasked: also record the probabilities computed with
            ``attention_mask=None`` (an extra attention call per block).

    Yields:
        An :class:`AttentionCapture`, filled as the layer is called.

    Example:

    ```python
    with capture_attention(model.backbone) as captured:
        model.backbone(inputs, training=False)
    first_layer = captured.latest()[0]  # [batch, heads, T, T]
    ```
    """
    if not layer.built:
        raise ValueError(f"build {layer.name!r} (call it once) before capturing its attention")
    blocks = transformer_blocks(layer)
    if not blocks:
        raise ValueError(f"{layer.name!r} ({type(layer).__name__}) holds no TransformerBlock")
    unbuilt = [b.name for b in blocks if not hasattr(b, "self_attention")]
    if unbuilt:
        raise ValueError(f"build {layer.name!r} (call it once) before capturing attention; unbuilt blocks: {unbuilt}")
    captured = AttentionCapture()
    patched = []
    try:
        for block in blocks:
            attention = block.self_attention
            name = f"{block.name}/{attention.name}"
            if not reports_attention(attention):
                captured.skipped.append(f"{name} ({type(attention).__name__})")
                logger.warning(
                    "attention layer %s (%s) has no `%s` argument; its attention is not captured",
                    name,
                    type(attention).__name__,
                    RETURN_SCORES_ARG,
                )
                continue
            masked_calls: list[np.ndarray] = []
            unmasked_calls: list[np.ndarray] = []
            captured.layer_names.append(name)
            captured.probabilities.append(masked_calls)
            captured.unmasked.append(unmasked_calls)
            # A plain function is no state that Keras tracks: the instance attribute shadows the class's `call`.
            attention.call = _recording_call(attention.call, name, masked_calls, unmasked_calls, unmasked)
            patched.append(attention)
        yield captured
    finally:
        for attention in patched:
            # Removing the instance attribute brings back the class's `call`.
            del attention.call


def _recording_call(original, name: str, masked_calls: list, unmasked_calls: list, unmasked: bool):
    def call(*args: Any, **kwargs: Any) -> Any:
        kwargs[RETURN_SCORES_ARG] = True
        # The probabilities follow the output; further outputs asked by the caller (side outputs) follow them.
        outputs, probabilities, *others = original(*args, **kwargs)
        masked_calls.append(_to_numpy(probabilities))
        if unmasked:
            kwargs["attention_mask"] = None
            try:
                unmasked_calls.append(_to_numpy(original(*args, **kwargs)[1]))
            except Exception as err:  # noqa: BLE001 - a layer that needs its mask only loses this extra record
                logger.warning("%s cannot run without attention mask (%s); no unmasked probabilities", name, err)
        return (outputs, *others) if others else outputs

    return call


def attention_probabilities(
    backbone: keras.layers.Layer, inputs: dict[str, Any], *, unmasked: bool = False
) -> AttentionCapture:
    """Runs a backbone once (inference mode) and returns the attention it computed.

    Args:
        backbone: a built backbone.
        inputs: its input dict (``item_ids`` ``[batch, T]`` and the features it reads).
        unmasked: also record the probabilities without attention mask.

    Returns:
        An :class:`AttentionCapture` of this one call; ``latest()`` gives one
        ``[batch, heads, T, T]`` array per captured block.
    """
    with capture_attention(backbone, unmasked=unmasked) as captured:
        backbone(inputs, training=False)
    return captured
