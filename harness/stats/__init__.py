"""The statistics, as pure functions over arrays and DataFrames: tests and intervals (inference),
what pairing bought, noise components, sequential tests."""
