"""The package version (part of the base: the checkpoint, cache and CLI record it)."""

__version__ = "0.1.0"
