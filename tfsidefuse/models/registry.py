"""Backbones and auxiliary heads by config name, and how to build a trainable model from a config."""

from __future__ import annotations

import inspect

import keras

from tfsidefuse.errors import ConfigError
from tfsidefuse.models.asif.asif_alignment_head import ASIFAlignmentHead
from tfsidefuse.models.asif.asif_backbone import ASIFBackbone
from tfsidefuse.models.auxiliary_head import AuxiliaryHead
from tfsidefuse.models.bert4rec.bert4rec_backbone import BERT4RecBackbone
from tfsidefuse.models.comif.comif_alignment_head import COMIFAlignmentHead
from tfsidefuse.models.comif.comif_backbone import COMIFBackbone
from tfsidefuse.models.difsr.difsr_attribute_head import DIFSRAttributeHead
from tfsidefuse.models.difsr.difsr_backbone import DIFSRBackbone
from tfsidefuse.models.fdsa.fdsa_backbone import FDSABackbone
from tfsidefuse.models.masked_item_model import CLOZE_TASK, MaskedItemModel
from tfsidefuse.models.next_item_model import NextItemModel
from tfsidefuse.models.nova.nova_backbone import NOVABackbone
from tfsidefuse.models.nova_bert.nova_bert_backbone import NOVABERTBackbone
from tfsidefuse.models.sasrec.sasrec_backbone import SASRecBackbone
from tfsidefuse.models.sasrec_f.sasrec_f_backbone import SASRecFBackbone
from tfsidefuse.models.sidefuse.side_fuse_backbone import SideFuseBackbone

#: Config name -> backbone class. Each class takes ``num_items`` and ``max_len``
#: (from the dataset) plus its own hyper-parameters.
BACKBONES = {
    "sasrec": SASRecBackbone,
    "sasrec_f": SASRecFBackbone,
    "fdsa": FDSABackbone,
    "nova": NOVABackbone,
    "difsr": DIFSRBackbone,
    "comif": COMIFBackbone,
    "sidefuse": SideFuseBackbone,
    "asif": ASIFBackbone,
    "bert4rec": BERT4RecBackbone,
    "nova_bert": NOVABERTBackbone,
}

#: Config name -> the head of the paper's auxiliary objectives, which the task adds to the next-item loss.
HEADS = {
    "difsr": DIFSRAttributeHead,
    "asif": ASIFAlignmentHead,
    "comif": COMIFAlignmentHead,
}
#: Head constructor arguments that come from the backbone, never from a config.
HEAD_ARGS_FROM_BACKBONE = ("item_features", "hidden_dim")

#: Model params of Cloze backbones that configure the task (`MaskedItemModel`: `mask_prob`, ...), not the backbone.
CLOZE_PARAMS = tuple(
    name
    for name in inspect.signature(MaskedItemModel).parameters
    if name not in ("backbone", "exclude_history", "kwargs")
)


def _head_params(name: str) -> tuple[str, ...]:
    """The model params of a model's head (its objective's hyper-parameters, loss weights included)."""
    if name not in HEADS:
        return ()
    return tuple(
        param
        for param in inspect.signature(HEADS[name]).parameters
        if param not in HEAD_ARGS_FROM_BACKBONE and param != "kwargs"
    )


#: Constructor parameter -> schema level of the side features derived for it.
SIDE_FEATURE_PARAMS = {"item_features": "item", "interaction_features": "interaction"}
#: The model param that restricts the side features to a subset of the schema's.
FEATURES_PARAM = "features"


def is_cloze(name: str) -> bool:
    """Whether the named backbone declares the Cloze task (class attribute ``task = "cloze"``)."""
    return getattr(BACKBONES.get(name), "task", None) == CLOZE_TASK


def split_task_params(name: str, params: dict) -> tuple[dict, dict]:
    """A model's params split into the backbone's and the task's.

    The task's are :data:`CLOZE_PARAMS` for Cloze backbones (they configure
    the :class:`MaskedItemModel`) and the params of the model's head in
    :data:`HEADS` (its auxiliary objectives); :func:`task_params_owner` says
    which class takes them.
    """
    task_params = CLOZE_PARAMS if is_cloze(name) else _head_params(name)
    if not task_params or not isinstance(params, dict):
        return params, {}
    return (
        {key: value for key, value in params.items() if key not in task_params},
        {key: value for key, value in params.items() if key in task_params},
    )


def task_params_owner(name: str) -> tuple[type, tuple[str, ...]]:
    """The class that takes a model's task params (:func:`split_task_params`), and its arguments set otherwise.

    Returns:
        ``(cls, exclude)``: :class:`MaskedItemModel` for Cloze backbones, else
        the model's head class in :data:`HEADS`; ``exclude`` names the
        constructor arguments that are not model params.
    """
    if is_cloze(name):
        return MaskedItemModel, ("backbone", "exclude_history")
    if name in HEADS:
        return HEADS[name], HEAD_ARGS_FROM_BACKBONE
    raise ConfigError(f"model {name!r} takes no task params")


def build_heads(name: str, params: dict, backbone: keras.layers.Layer) -> list[AuxiliaryHead]:
    """The auxiliary heads of a model: its paper's head in :data:`HEADS`, configured by the task params.

    Args:
        name: a key of :data:`BACKBONES`.
        params: the head's params (the task params of :func:`split_task_params`).
        backbone: the model's backbone, which gives the head its item features
            and hidden width.

    Returns:
        A list with the head, or an empty list for a model without one.
    """
    if name not in HEADS:
        return []
    head_cls = HEADS[name]
    derived = {
        arg: getattr(backbone, arg) for arg in HEAD_ARGS_FROM_BACKBONE if arg in inspect.signature(head_cls).parameters
    }
    return [head_cls(**derived, **params, dtype=backbone.dtype_policy)]


def side_feature_params(backbone_cls: type) -> tuple[str, ...]:
    """The side-feature parameters (``item_features``, ``interaction_features``) a backbone's constructor takes.

    They are derived from the dataset schema by :func:`build_backbone`, never
    given in a config; a backbone that takes any of them accepts the model
    param ``features`` instead.
    """
    parameters = inspect.signature(backbone_cls).parameters
    return tuple(name for name in SIDE_FEATURE_PARAMS if name in parameters)


def _side_features(name: str, derived: tuple[str, ...], schema, selected: list[str] | None) -> dict[str, list]:
    """The schema's features of the levels a backbone reads, restricted to ``selected``, by constructor param."""
    levels = {SIDE_FEATURE_PARAMS[param] for param in derived}
    available = [f for f in schema.features if f.level in levels]
    if selected is not None:
        if isinstance(selected, str) or not isinstance(selected, (list, tuple)):
            raise ConfigError(f"model {name!r}: `features` must be a list of feature names, got {selected!r}")
        unknown = [n for n in selected if n not in {f.name for f in available}]
        if unknown:
            raise ConfigError(
                f"model {name!r}: unknown feature(s) {unknown} in `features`; available: {[f.name for f in available]}"
            )
        available = [f for f in available if f.name in set(selected)]
    for f in available:
        if f.vocab_size is None:
            raise ValueError(f"feature {f.name!r} has no vocab_size; prepare the dataset before building a model")
    return {
        "item_features": [
            {"name": f.name, "vocab_size": f.vocab_size, "max_values": f.max_values}
            for f in available
            if f.level == "item"
        ],
        "interaction_features": [
            {"name": f.name, "vocab_size": f.vocab_size} for f in available if f.level == "interaction"
        ],
    }


def used_features(name: str, params: dict, schema) -> list[str]:
    """The names of the side features a model config reads from a dataset (empty for id-only models)."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown model {name!r}; available: {sorted(BACKBONES)}")
    derived = side_feature_params(BACKBONES[name])
    if not derived:
        return []
    features = _side_features(name, derived, schema, params.get(FEATURES_PARAM))
    return [f["name"] for param in derived for f in features[param]]


def build_backbone(name: str, params: dict, *, schema, item_feature_tables: dict | None = None) -> keras.layers.Layer:
    """Instantiates a backbone for a dataset schema.

    For backbones that read side features (constructor parameters
    ``item_features`` / ``interaction_features``), the features come from the
    schema: all those of the levels the backbone reads, or those named by the
    param ``features``. The tables of the selected item features are then
    assigned from ``item_feature_tables``.

    Args:
        name: a key of :data:`BACKBONES`.
        params: the backbone's hyper-parameters, plus ``features`` (a list of
            feature names) for backbones that read side features.
        schema: the prepared dataset's :class:`~tfsidefuse.data.schema.DatasetSchema`.
        item_feature_tables: item id -> attribute ids per item-level feature.
            ``None`` leaves the item tables empty (all padding), for a model
            whose weights, tables included, are loaded afterwards.

    Raises:
        ValueError: on an unknown model name, an unknown feature name, side
            features asked of a backbone that reads none, or a missing table.
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown model {name!r}; available: {sorted(BACKBONES)}")
    backbone_cls = BACKBONES[name]
    params = dict(params)
    derived = side_feature_params(backbone_cls)
    given = sorted(set(params) & set(SIDE_FEATURE_PARAMS))
    if given:
        raise ConfigError(
            f"model {name!r}: {given} are derived from the dataset schema; select features with `features`"
        )
    if not derived:
        if FEATURES_PARAM in params:
            raise ConfigError(f"model {name!r} reads no side features; remove `features` from its params")
        return backbone_cls(num_items=schema.num_items, max_len=schema.max_len, **params)

    features = _side_features(name, derived, schema, params.pop(FEATURES_PARAM, None))
    params.update({param: features[param] for param in derived})
    backbone = backbone_cls(num_items=schema.num_items, max_len=schema.max_len, **params)
    item_features = params.get("item_features", [])
    if item_features and item_feature_tables is not None:
        missing = [f["name"] for f in item_features if f["name"] not in item_feature_tables]
        if missing:
            raise ValueError(
                f"model {name!r}: no item-feature table for {missing}; available tables: {sorted(item_feature_tables)}"
            )
        backbone.set_item_feature_tables({f["name"]: item_feature_tables[f["name"]] for f in item_features})
    return backbone


def build_model(
    name: str,
    params: dict | None = None,
    *,
    prepared=None,
    schema=None,
    item_feature_tables: dict | None = None,
    objective: str = "all_positions",
    exclude_history: bool = False,
    train_metrics: bool = False,
    sampled_softmax=None,
) -> NextItemModel:
    """A :class:`NextItemModel` around the named backbone, with the auxiliary head of its paper.

    The model params of the head in :data:`HEADS` (DIF-SR's ``lambda_attr``,
    ASIF's ``rsa_weight``, COMIF's ``iaa_weight``, ...) configure the head,
    the others the backbone. Backbones that declare the Cloze task (class attribute ``task =
    "cloze"``: BERT4Rec, NOVA-BERT) get a :class:`MaskedItemModel` instead,
    which takes the params in :data:`CLOZE_PARAMS` (``mask_prob``,
    ``ft_ratio``, ...) from ``params``; it trains on any objective (Cloze
    training uses the last label of each example, so ``objective`` is not
    passed to it).

    Args:
        name: the model's name, a key of :data:`BACKBONES`.
        params: the model params (the config's ``model`` section without ``name``).
        prepared: a :class:`~tfsidefuse.data.prepared.PreparedDataset`: the
            schema and the item-feature tables in one argument.
        schema: the dataset schema, when ``prepared`` is not given.
        item_feature_tables: the item-feature tables, when ``prepared`` is not given.
        objective: the training objective (``training.objective``:
            ``"all_positions"``, ``"all_targets"`` or ``"prefix"``), which says
            which labels the training data carry (see :class:`NextItemModel`).
        exclude_history: at inference, never recommend items of the input sequence.
        train_metrics: also compute the ranking metrics on the training
            batches (see :class:`NextItemModel`).
        sampled_softmax: a :class:`~tfsidefuse.layers.SampledSoftmax` to train
            with instead of the full softmax, or ``None``.
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown model {name!r}; available: {sorted(BACKBONES)}")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ConfigError(f"model {name!r}: params must be a dict of hyper-parameters, got {params!r}")
    if prepared is not None:
        schema = prepared.schema if schema is None else schema
        item_feature_tables = prepared.item_feature_tables if item_feature_tables is None else item_feature_tables
    if schema is None:
        raise ConfigError(
            f"model {name!r}: build_model needs the prepared dataset (prepared=...) or its schema: it sets the "
            "item count, the sequence length and the side features"
        )
    params, task_params = split_task_params(name, params)
    if is_cloze(name):
        backbone = build_backbone(name, params, schema=schema, item_feature_tables=item_feature_tables)
        return MaskedItemModel(
            backbone,
            exclude_history=exclude_history,
            train_metrics=train_metrics,
            sampled_softmax=sampled_softmax,
            **task_params,
        )
    backbone = build_backbone(name, params, schema=schema, item_feature_tables=item_feature_tables)
    heads = build_heads(name, task_params, backbone)
    if item_feature_tables is not None:
        tables = {f["name"]: item_feature_tables[f["name"]] for f in getattr(backbone, "item_features", [])}
        for head in heads:
            head.set_item_feature_tables(tables)
    return NextItemModel(
        backbone,
        objective=objective,
        exclude_history=exclude_history,
        train_metrics=train_metrics,
        sampled_softmax=sampled_softmax,
        heads=heads,
    )
