"""``dagster ... -m feedback_pipeline.definitions``: the code location, built in ``defs/``."""

from feedback_pipeline.defs.definitions import defs

__all__ = ["defs"]
