"""The blended training set, the model families and the challengers (DESIGN sections 6-7)."""
