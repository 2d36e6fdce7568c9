"""The invoke command-line layer: one module per namespace, each thin (DESIGN: Architecture).

Task bodies import the library modules they call (infra.deploy, infra.engine, ...) where
they run: `invoke --list` and `--help` then never load the Docker SDK, passlib or the
settings, which halves the start-up (goal: 0.3 s, docs/benchmarks.md).
"""

import sys

# invoke turns off writing bytecode before it loads tasks.py (so that no tasks.pyc appears
# next to it), and with it for every module imported after: each `invoke` would compile
# this package and the infra modules a task imports again, some 40 ms of `invoke --list`
# and more for `invoke status`. Python's own setting (PYTHONDONTWRITEBYTECODE, -B) still
# decides; __pycache__/ is ignored by git.
sys.dont_write_bytecode = bool(sys.flags.dont_write_bytecode)
