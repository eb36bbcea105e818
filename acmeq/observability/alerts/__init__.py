"""Alerts: rules (what holds), channels (where notices go), engine (one evaluator cluster-wide)."""
