"""How many copies a flow may run at once.

The flow's thread pool is sized for the largest allowed concurrency; each stage's worker count
is what enforces the per-run setting, so one flow serves every deployment's parameters.
"""

MAX_CONCURRENCY = 64
