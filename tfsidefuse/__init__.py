"""tfsidefuse: side-information fusion for sequential recommendation in Keras 3.

``import tfsidefuse`` registers every layer, model, loss and metric with Keras, so that
``keras.models.load_model("model.keras")`` works after this one import, and gives the entry points:
:func:`load_config` (a YAML file or a preset name), :func:`prepare`, :func:`datasets`, :func:`create_model`,
:func:`build_model`, :func:`train`, :func:`evaluate`, :func:`export_model`, and :class:`InputEncoder` (raw item
ids and feature values to model inputs, and model ids back to raw ids, as the exported SavedModel maps them).
"""

import os

# TensorFlow's CPU tensors come from its best-fit pool (the allocator it uses on GPUs), which keeps freed buffers for
# the next step, instead of the C library's allocator, which returns every large buffer (the [slots, items] logits of
# a full softmax) to the system and faults its pages in again at the next step: about a fifth faster training steps
# on CPU (docs/benchmarks.md, "Speed"). Read by TensorFlow when it first allocates a tensor, so it holds unless the
# process ran a TensorFlow op before importing tfsidefuse; set it to "false" beforehand to opt out (README, Install).
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

from tfsidefuse import layers, losses, metrics, models  # noqa: E402  (importing them registers their classes)
from tfsidefuse.config import RunConfig, load_config  # noqa: E402
from tfsidefuse.data.input_encoder import InputEncoder  # noqa: E402
from tfsidefuse.errors import ConfigError, DataError, PreparedDataError, RunDirError, UserError  # noqa: E402
from tfsidefuse.models import MaskedItemModel, NextItemModel  # noqa: E402
from tfsidefuse.models.registry import BACKBONES, build_model  # noqa: E402
from tfsidefuse.presets import preset_names  # noqa: E402
from tfsidefuse.training.optimizers import LazyAdam  # noqa: E402
from tfsidefuse.version import __version__  # noqa: E402

#: Public names defined in modules that need TensorFlow (data pipelines, training loop, export), by module.
_TENSORFLOW_NAMES = {
    "as_config": "tfsidefuse.api",
    "create_model": "tfsidefuse.api",
    "datasets": "tfsidefuse.api",
    "evaluate": "tfsidefuse.api",
    "prepare": "tfsidefuse.api",
    "train": "tfsidefuse.api",
    "PreparedDataset": "tfsidefuse.data.prepared",
    "export_model": "tfsidefuse.export",
}

try:
    import tensorflow  # noqa: E402, F401
except ImportError:
    # Without TensorFlow (a JAX-only machine) the layers, models, losses, metrics and configs above still work;
    # the names of `_TENSORFLOW_NAMES` are imported on first use, which raises the ImportError of TensorFlow.
    def __getattr__(name: str):
        if name in _TENSORFLOW_NAMES:
            import importlib

            return getattr(importlib.import_module(_TENSORFLOW_NAMES[name]), name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

else:
    from tfsidefuse.api import as_config, create_model, datasets, evaluate, prepare, train  # noqa: E402
    from tfsidefuse.data.prepared import PreparedDataset  # noqa: E402
    from tfsidefuse.export import export_model  # noqa: E402

__all__ = [
    "BACKBONES",
    "ConfigError",
    "DataError",
    "InputEncoder",
    "LazyAdam",
    "MaskedItemModel",
    "NextItemModel",
    "PreparedDataError",
    "PreparedDataset",
    "RunConfig",
    "RunDirError",
    "UserError",
    "__version__",
    "as_config",
    "build_model",
    "create_model",
    "datasets",
    "evaluate",
    "export_model",
    "layers",
    "load_config",
    "losses",
    "metrics",
    "models",
    "prepare",
    "preset_names",
    "train",
]
