"""MLflow: logging, registering, aliases and the serving model (DESIGN section 7)."""
