"""recsys: a deep-learning recommender research framework."""

from recsys.errors import CheckpointError, ConfigError, DataError, RecsysError

__version__ = "0.1.0"

__all__ = ["CheckpointError", "ConfigError", "DataError", "RecsysError", "__version__", "load"]


def load(directory, backend: str = "auto", trust=None):
    """Load an exported artifact (``recsys-export``): see :func:`recsys.serving.artifact.load`
    (``backend="auto"`` runs no code from the artifact; ``trust``: packages besides recsys whose
    models it may name).

    What the returned :class:`~recsys.serving.artifact.LoadedRecommender` answers:

    - ``recommend(users, k)``: top-k items of known users; ``recommend(history=[item ids])``
      and/or ``recommend(attributes={...})``: a new customer (models that score a history;
      models with user attributes); ``new_items={id: attributes}``: new products ranked with
      the catalogue (models with item attributes);
    - ``score_new_items([attributes, ...], users)``: (users, items) scores of new products, on
      the catalogue's scale; ``top_users(attributes, k)``: the users a new product suits best;
      ``similar(attributes, k)``: catalogue items nearest a new product;
      ``similar_items([item ids], k)``: items that go with known ones.

    Attributes are dicts of field → value or list of values (``{"genre": ["Drama"]}``), encoded
    with the training vocabularies (an unseen value counts as unknown); a model that cannot do
    an operation raises :class:`RecsysError` saying why.

    Imported on first use, so ``import recsys`` stays light (no torch, Hydra or Lightning).
    """
    from recsys.serving.artifact import load as _load

    return _load(directory, backend=backend, trust=trust)
