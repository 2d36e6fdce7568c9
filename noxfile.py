"""Sessions: lint, unit (default), images and acceptance (opt-in: they need a Docker engine)."""

import nox

nox.needs_version = ">=2024.10"
nox.options.sessions = ["lint", "unit"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


def _install(session: nox.Session) -> None:
    session.install("-e", ".[test]")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Run ruff over the whole repository."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON)
def unit(session: nox.Session) -> None:
    """Run the unit tests (no Docker daemon needed)."""
    _install(session)
    # promtool for the alert rule tests, from Debian's package; reused once fetched. Should the
    # fetch fail, its message stands and the rule tests fail saying what is missing.
    session.run("bash", ".ci/promtool", external=True, success_codes=[0, 1])
    session.run("pytest", *(session.posargs or ("tests/unit", "-n", "2")))


@nox.session(python=PYTHON, default=False)
def images(session: nox.Session) -> None:
    """Build (or reuse) the stand-in images and run their contract tests."""
    _install(session)
    session.run("python", "-m", "tests.images.build")
    session.run("pytest", *(session.posargs or ("tests/images",)))


@nox.session(python=PYTHON, default=False)
def acceptance(session: nox.Session) -> None:
    """Deploy every stack into fresh Docker-in-Docker swarms and check them from outside."""
    _install(session)
    # Four workers, each with a swarm of its own, a test module at a time: most of a module's
    # time is spent waiting for services (two workers left the two cores idle 62% of the
    # time; four, 33%), and memory is plenty (a swarm with the platform takes about 1 GB).
    default = ("tests/acceptance", "-n", "4", "--dist", "loadfile")
    session.run("pytest", *(session.posargs or default))


@nox.session(python=PYTHON, default=False)
def acceptance_nodes(session: nox.Session) -> None:
    """The swarm tests on three dind nodes: data placed by label, a lost worker survived,
    three managers losing one."""
    _install(session)
    default = (
        "tests/acceptance/test_node_exporter.py",  # every node scraped at its own address
        "tests/acceptance/test_swarm.py",
        "--nodes=3",
    )
    session.run("pytest", *(session.posargs or default))


@nox.session(python=PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Print deploy, redeploy and command timings against plain docker, in a dind swarm."""
    _install(session)
    session.run("python", "-m", "tests.bench.bench_platform", *session.posargs)
