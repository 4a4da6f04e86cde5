"""``torch.compile`` for small hot functions, with the function itself as the fallback.

On the CPU a step made of many small tensor operations is bound by the passes each one makes over
memory; Inductor fuses them into a few loops (MF's sparse BPR step and the row-wise optimizers:
1.3-3x fewer CPU seconds per step, benchmarks/scale.md). It needs a C++ compiler at run time and
compiles once per input shape (~5-20 s, cached on disk across processes); where that fails, one
warning and the eager function from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger("recsys")


class Compiled:
    """``fn`` through ``torch.compile`` on first use; the eager ``fn`` if compiling fails.

    Only the first call of each new compilation may fall back (compiling happens before the
    compiled code runs, so nothing was applied twice); an error later is raised as it is."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self._compiled: Callable[..., Any] | None = None
        self.failed = False

    def __call__(self, *args: Any) -> Any:
        if self.failed:
            return self.fn(*args)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn)
            try:
                return self._compiled(*args)
            except Exception as e:  # no C++ compiler, an unsupported platform, ...
                self.failed = True
                reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                log.warning(
                    "torch.compile of %s failed (%s: %s); running it eagerly",
                    self.fn.__name__,
                    type(e).__name__,
                    reason,
                )
                return self.fn(*args)
        return self._compiled(*args)
