"""Publishing runs to experiment trackers (TensorBoard)."""
