"""harness: seed-sweep benchmarking for from-scratch GPT-2 training.

The subpackages are the map: core (config keys, definitions, errors, files), data (corpora,
tokens, batch order), model (the network and its switches), training (the worker, checkpoints,
bench, export, generate), store (the run record and the results store), planning (sweep plans,
budgets, adaptive rounds), launch (running plans here), cluster (Slurm), stats (pure
statistics), report (report and status), trackers (TensorBoard, MLflow, W&B, Trackio), api (the
Python API: plan, run and report from Python), cli (the command line over it), and
sweeps (the built-in presets and interventions, as data). Imports run one way: from cli down to
core and model.
"""
