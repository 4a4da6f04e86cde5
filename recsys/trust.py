"""What a file being loaded may name for construction.

A checkpoint, an artifact or a stored run config names classes and functions by dotted path
(``model._target_``, ``optim._target_``, ``data.source``). Importing and calling such a path runs
code chosen by whoever wrote the file, so a file from elsewhere may name only recsys' own
classes, and whatever packages the user names *at load time* (a command-line option, or the
environment variable :data:`ENV`), never a package the file itself names. The check is made on
the string, before anything is imported.

A config the user composed for training is the user's own: it keeps full freedom (``trust=None``
below).
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from recsys.errors import CheckpointError, ConfigError

ENV = "RECSYS_TRUSTED_PACKAGES"  # comma-separated package names trusted by the user

# What recsys' own construction looks like, by kind: (allowed dotted prefixes, what it must be)
_OWN = {
    "model": (("recsys.models.",), "a recsys model class"),
    "optim": (("torch.optim.", "recsys."), "a torch.optim or recsys optimizer class"),
    "source": (("recsys.data.",), "a recsys data loader (recsys.data.*.load*)"),
}
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
_PACKAGE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def trusted_packages() -> tuple[str, ...]:
    """The packages named in the environment variable :data:`ENV` (comma-separated)."""
    return _package_names(os.environ.get(ENV, ""), ENV)


def _package_names(value: Iterable[str] | str | None, key: str = "trust") -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(p).strip() for p in items if str(p).strip()]
    for p in names:
        if not _PACKAGE.fullmatch(p):
            raise ConfigError(f"{key}: {p!r} is not a package name (e.g. mypackage or my.models)")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Trust:
    """Construction allowed while loading ``origin`` (the file, named in refusals): recsys' own
    classes, the ``packages`` the user named on the command line, and those in :data:`ENV`
    (read when the check is made)."""

    origin: str
    packages: tuple[str, ...] = ()

    @classmethod
    def for_file(cls, origin: Any, named: Iterable[str] | str | None = None) -> Trust:
        """``origin`` with the packages ``named`` on the command line (a list or a
        comma-separated string; checked to be package names)."""
        return cls(str(origin), _package_names(named))

    def allows(self, target: str, kind: str) -> bool:
        prefixes, _ = _OWN[kind]
        if any(target.startswith(p) for p in prefixes):
            return kind != "source" or target.rpartition(".")[2].startswith("load")
        packages = self.packages + trusted_packages()
        return any(target == p or target.startswith(p + ".") for p in packages)


def resolve(target: Any, kind: str, key: str, trust: Trust | None) -> Any:
    """Import the object ``target`` names (``kind``: ``model``, ``optim`` or ``source``; ``key``
    names the setting in messages). With a :class:`Trust` (a file being loaded), a target that
    is neither recsys' own nor in a trusted package is refused by name before any import."""
    if not isinstance(target, str) or not _DOTTED.fullmatch(target):
        where = f"{trust.origin}: " if trust else ""
        raise (CheckpointError if trust else ConfigError)(
            f"{where}{key} must be a dotted import path, got {target!r}"
        )
    if trust is not None and not trust.allows(target, kind):
        _, what = _OWN[kind]
        top = target.split(".")[0]
        raise CheckpointError(
            f"{trust.origin}: {key}={target!r} is not {what}; a file being loaded may not name "
            f"other code (if you trust the package {top!r}, name it when loading: "
            f"{ENV}={top}, or the command's trust option)"
        )
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        where = f"{trust.origin}: " if trust else ""
        raise (CheckpointError if trust else ConfigError)(
            f"{where}{key}: cannot import {target!r}"
        ) from None


def check(target: Any, kind: str, key: str, trust: Trust | None) -> None:
    """Refuse ``target`` as :func:`resolve` would, without importing it (for a path that a later
    step imports, such as ``data.source``)."""
    if trust is None:
        return
    if not isinstance(target, str) or not _DOTTED.fullmatch(target):
        raise CheckpointError(f"{trust.origin}: {key} must be a dotted import path, got {target!r}")
    if not trust.allows(target, kind):
        resolve(target, kind, key, trust)  # raises the refusal
