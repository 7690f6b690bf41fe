"""Scores, as train and evaluate compute them, with the `evaluate` metric modules shipped in `modules/`."""
