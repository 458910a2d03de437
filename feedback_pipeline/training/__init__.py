"""The blended training set, the model families and the challengers."""
