"""Models: plain ``torch.nn.Module`` s following the contract in :mod:`recsys.models.base`."""

from recsys.models.base import Recommender, build_model

__all__ = ["Recommender", "build_model"]
