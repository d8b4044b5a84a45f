"""What the store says: `harness report` (loading, comparison, rendering, plots) and `harness
status`."""
