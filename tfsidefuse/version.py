"""The package version, defined in one place."""

__version__ = "0.3.0"
