"""Operating state kept in the swarm itself (DESIGN decision 12), so every manager and every
CI runner sees the same: the deploy lock (lock.py), the history of operations (history.py),
the live diff of a deploy against the running services (diff.py), stack rollback
(rollback.py), and the wrapper every mutating task runs in (run.py).

Importing this package loads nothing but config.py's neighbours on demand: settings.py
reads config.py, which must stay free of the Docker SDK.
"""
