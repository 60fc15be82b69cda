"""Studies: sweeps, Optuna searches and comparisons of runs."""
