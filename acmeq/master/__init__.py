"""The master's internals: autoscale policy and simulator, cluster control through Redis."""
