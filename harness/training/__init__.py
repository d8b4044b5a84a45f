"""The run itself: the training worker and its step, checkpoints, and what is done with a trained
model (bench, export, generate)."""
