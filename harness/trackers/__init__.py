"""Publishing runs to experiment trackers: TensorBoard (written as the curves arrive), MLflow, W&B and Trackio."""
