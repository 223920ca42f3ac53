"""The release number, in one place that imports nothing (records on disk carry it)."""

__version__ = "0.1.0"
