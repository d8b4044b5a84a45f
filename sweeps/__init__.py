"""The built-in presets, interventions and sweep files: data (TOML), installed inside the package as
harness.sweeps and found as package resources (harness.core.definitions)."""
