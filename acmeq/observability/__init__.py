"""Observability: metrics (write and read side), status, Prometheus exposition, alerts."""
