"""Observability: the one queue probe, metrics (write and read side), status, Prometheus, alerts."""
