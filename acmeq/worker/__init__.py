"""The worker process: main loop, fast path and its Lua scripts, fork horse, recovery of dead
workers' jobs."""
