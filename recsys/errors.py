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


class Interrupted(BaseException):
    """SIGINT or SIGTERM stopped a run. A :class:`BaseException`, as ``KeyboardInterrupt`` is, so
    no ``except Exception`` swallows it; the command line prints one line and exits with
    128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int, detail: str = ""):
        super().__init__(signum, detail)
        self.signum = int(signum)
        self.detail = detail

    def __str__(self) -> str:
        import signal

        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        return f"interrupted by {name}" + (f"; {self.detail}" if self.detail else "")
