"""Progress internals: the SQL store, live updates and cancel requests over Redis, the smoothed
rate, the ticker, watching and cancelling. The public API is acmeq/progress.py."""
