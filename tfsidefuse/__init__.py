"""tfsidefuse: side-information fusion for sequential recommendation in Keras 3."""

import os

# TensorFlow's CPU tensors come from its best-fit pool (the allocator it uses on GPUs), which keeps freed buffers for
# the next step, instead of the C library's allocator, which returns every large buffer (the [slots, items] logits of
# a full softmax) to the system and faults its pages in again at the next step: about a fifth faster training steps
# on CPU (README, "Speed"). Read by TensorFlow when it first allocates a tensor, so it holds unless the process ran a
# TensorFlow op before importing tfsidefuse; set it to "false" beforehand to opt out.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

from tfsidefuse.version import __version__  # noqa: E402

__all__ = ["__version__"]
