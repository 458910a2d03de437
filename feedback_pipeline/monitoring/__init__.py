"""What decides that a retrain is due: new labels, new landing files."""
