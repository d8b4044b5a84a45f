"""The foundation every other part stands on: config keys and arms, definitions (presets and
interventions, built-in and the user's), errors, bounds on numbers, atomic files, versions."""
