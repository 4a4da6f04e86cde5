"""Shared command-line plumbing: turn user errors into one line and a non-zero exit."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from recsys.errors import Interrupted, RecsysError

EXIT_USER_ERROR = 2


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <what>`` and exit status 2, no usage dump."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def user_error(exc: BaseException) -> RecsysError | None:
    """The :class:`RecsysError` behind ``exc`` (Hydra wraps errors raised while instantiating)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, RecsysError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def report_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for Hydra task functions: a user error prints ``error: <message>`` on stderr
    and exits with status 2, without a traceback; SIGINT/SIGTERM (:class:`Interrupted`) print one
    line and exit with 128 + the signal number (Ctrl-C elsewhere: one line, 130); anything else propagates (a bug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Interrupted as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(128 + e.signum)
        except KeyboardInterrupt:  # Ctrl-C in a command without its own signal handling
            print("error: interrupted (SIGINT); nothing was completed", file=sys.stderr, flush=True)
            sys.exit(130)
        except Exception as e:
            err = user_error(e)
            if err is None:
                raise
            logging.getLogger("recsys").debug("user error", exc_info=True)
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)

    return wrapper


# The configs/ folder of the source tree (the package is installed editable: `pip install -e .`).
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")
