"""`deploy.* --diff` and `--dry-run`: print the live diff when a swarm answers."""

from __future__ import annotations

import sys

from docker.errors import DockerException

from infra import engine
from infra.errors import EngineError
from infra.operations import diff
from infra.settings import Settings


def show(settings: Settings, target: str, tunnel: bool, required: bool) -> bool:
    """Print what deploying `target` would change in the running swarm; True when anything
    would. Without a reachable swarm manager: an error when the diff was asked for
    (`required`), else one line saying the plan above is all there is."""
    try:
        client = engine.connect(settings.docker_host)
        engine.require_manager(client)
    except (EngineError, DockerException) as exc:
        if required:
            raise
        # On stderr: the plan on stdout stays what it is without a daemon.
        reason = str(exc).splitlines()[0]
        print(f"live diff: none (no swarm manager reachable: {reason})", file=sys.stderr)
        return False
    diffs = diff.live_diff(settings, target, tunnel, client)
    print(f"live diff for {target} against the running swarm (nothing is changed):")
    print("\n".join(diff.format_diff(diffs)))
    return diff.anything_changes(diffs)
