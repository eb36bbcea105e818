"""Progress internals: the SQL store, live updates over Redis pub/sub, watching and cancelling. The
public API is acmeq/progress.py."""
