"""The master's internals: the pure pool lifecycle and autoscale policy (with host budgets and a
trace simulator), what the master reads from Redis, cluster control, the scheduler, the daemon."""
