"""Operating state kept in the swarm itself (DESIGN decision 12), so every manager and every
CI runner sees the same: the deploy lock (lock.py), the history of operations (history.py),
the live diff of a deploy against the running services (diff.py, live.py), stack rollback
(rollback.py), and the frame every mutating task runs in (run.py).

This file imports nothing: settings.py reads config.py, which must stay free of the Docker
SDK so that `invoke --list` stays fast.
"""
