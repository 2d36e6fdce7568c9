"""The invoke command-line layer: one module per namespace, each thin (DESIGN: Architecture).

Task bodies import the library modules they call (infra.deploy, infra.engine, ...) where
they run: `invoke --list` and `--help` then never load the Docker SDK or passlib,
which halves the start-up (goal: 0.3 s, docs/benchmarks.md).
"""
