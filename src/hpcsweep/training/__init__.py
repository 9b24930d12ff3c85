"""One training: the Lightning module, micro-batching, optimizers and schedules, efficiency figures."""
