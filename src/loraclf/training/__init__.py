"""Training: the run (config -> run directory), the loop, checkpoints and run guards."""
