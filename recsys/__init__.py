"""recsys: a deep-learning recommender research framework."""

from recsys.errors import CheckpointError, ConfigError, DataError, RecsysError

__version__ = "0.1.0"

__all__ = ["CheckpointError", "ConfigError", "DataError", "RecsysError", "__version__", "load"]


def load(directory, backend: str = "auto", trust=None):
    """Load an exported artifact (``recsys-export``): see :func:`recsys.serving.artifact.load`
    (``backend="auto"`` runs no code from the artifact; ``trust``: packages besides recsys whose
    models it may name).

    Imported on first use, so ``import recsys`` stays light (no torch, Hydra or Lightning).
    """
    from recsys.serving.artifact import load as _load

    return _load(directory, backend=backend, trust=trust)
