"""tfsidefuse: side-information fusion for sequential recommendation in Keras 3.

``import tfsidefuse`` registers every layer, model, loss and metric with Keras, so that
``keras.models.load_model("model.keras")`` works after this one import, and gives the main entry points.
"""

import os

# TensorFlow's CPU tensors come from its best-fit pool (the allocator it uses on GPUs), which keeps freed buffers for
# the next step, instead of the C library's allocator, which returns every large buffer (the [slots, items] logits of
# a full softmax) to the system and faults its pages in again at the next step: about a fifth faster training steps
# on CPU (docs/benchmarks.md, "Speed"). Read by TensorFlow when it first allocates a tensor, so it holds unless the
# process ran a TensorFlow op before importing tfsidefuse; set it to "false" beforehand to opt out.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

from tfsidefuse import layers, losses, metrics, models  # noqa: E402  (importing them registers their classes)
from tfsidefuse.errors import ConfigError, DataError, PreparedDataError, RunDirError, UserError  # noqa: E402
from tfsidefuse.models import MaskedItemModel, NextItemModel  # noqa: E402
from tfsidefuse.models.registry import BACKBONES, build_model  # noqa: E402
from tfsidefuse.version import __version__  # noqa: E402

__all__ = [
    "BACKBONES",
    "ConfigError",
    "DataError",
    "MaskedItemModel",
    "NextItemModel",
    "PreparedDataError",
    "RunDirError",
    "UserError",
    "__version__",
    "build_model",
    "layers",
    "losses",
    "metrics",
    "models",
]
