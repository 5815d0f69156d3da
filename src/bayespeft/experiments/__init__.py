"""Experiments over many runs: compare methods, sweep a grid, tune hyperparameters, report tables and figures."""
