"""Errors caused by what a user gave tfsidefuse, as opposed to bugs in it.

Every such error derives from :class:`UserError`. The command line prints its message (which names the file,
line or key and the value) and exits with code 2; a traceback means a bug in tfsidefuse. Each class also derives
from ``ValueError``, so code that caught ``ValueError`` keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """An input of the user's (config, option, data file, run or export directory) is wrong."""


class ConfigError(UserError, ValueError):
    """A configuration, a ``--set`` override or a model/training parameter is invalid."""


class DataError(UserError, ValueError):
    """A raw data file (interactions, item attributes, headers) cannot be read as its format says."""


class PreparedDataError(UserError, ValueError):
    """A prepared dataset is missing, damaged, or out of date with the raw files it was made from."""


class RunDirError(UserError, ValueError):
    """A run directory holds something else than the run asked for (another config, no model, another model)."""
