"""tfsidefuse: side-information fusion for sequential recommendation in Keras 3."""

from tfsidefuse.version import __version__

__all__ = ["__version__"]
