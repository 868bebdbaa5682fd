"""The training loop every family shares: typed options, one Run shape, EMA, atomic checkpoints, resume."""
