"""Sweeps as Slurm (or submitit-local) jobs: options, submission, the job, and asking Slurm."""
