"""MLflow: logging, registering, aliases and the serving model."""
