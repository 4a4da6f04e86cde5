"""recsys: a deep-learning recommender research framework."""

from recsys.errors import CheckpointError, ConfigError, DataError, RecsysError

__version__ = "0.1.0"

__all__ = ["CheckpointError", "ConfigError", "DataError", "RecsysError", "__version__"]
