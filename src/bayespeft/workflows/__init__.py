"""One-run workflows: train a run, then evaluate, calibrate or OOD-test it (the API behind those commands)."""
