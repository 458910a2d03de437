"""The serving policy: learned from feedback, versioned, applied through the registry."""
