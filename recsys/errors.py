"""Exception types of the public API.

Every error a user can cause (a bad config value, a malformed file, a missing checkpoint) is
raised as a subclass of :class:`RecsysError` with a one-line message that names what is wrong and
where. The command-line entry points print that line and exit non-zero; the Python API lets it
propagate.
"""

from __future__ import annotations


class RecsysError(Exception):
    """Base class: a problem with the user's input, reported without a traceback on the CLI."""


class ConfigError(RecsysError, ValueError):
    """An invalid configuration value or key (names the key)."""


class DataError(RecsysError, ValueError):
    """A missing, malformed or unusable dataset file (names the file, and the line where known)."""


class CheckpointError(RecsysError):
    """A missing, truncated or incompatible checkpoint or artifact file (names the file)."""
