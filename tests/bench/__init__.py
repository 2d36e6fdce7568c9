"""Benchmarks that print figures (never timed assertions): `nox -s bench`."""
