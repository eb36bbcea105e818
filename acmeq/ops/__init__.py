"""Operator actions on jobs and queues: failed jobs (list/retry/flush), the SQL failure log, job
views, queue clear/pause."""
