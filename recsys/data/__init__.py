"""Data: raw sources → :class:`Interactions` → preprocessing → splits → batches."""

from recsys.data.interactions import CSR, Interactions, Split

__all__ = ["CSR", "Interactions", "Split"]
