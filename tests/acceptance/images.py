"""Which image each platform service runs in the acceptance swarm, and which have none.

Preference: the upstream image if this machine's engine has it (a GitHub-hosted runner pulls
them), else the stand-in built by tests/images, else nothing, with the reason from the
stand-in map. A service with no image is left out of the deploy and its tests skip, naming
the image; it is never counted as passed.
"""

from __future__ import annotations

from dataclasses import dataclass

import docker
from docker.errors import ImageNotFound


@dataclass(frozen=True)
class ImageChoice:
    variable: str  # e.g. GRAFANA_IMAGE
    upstream: str
    ref: str | None  # what the swarm runs; None when no image can be had
    reason: str = ""  # why there is none

    @property
    def source(self) -> str:
        if self.ref is None:
            return "missing"
        return "upstream" if self.ref == self.upstream else "stand-in"


def _present(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
    except ImageNotFound:
        return False
    return True


def _standins() -> tuple[dict[str, str], dict[str, str]]:
    """(variable -> stand-in ref built here, variable -> why none can be built)."""
    try:
        from tests.images.build import image_overrides, standins
    except ImportError as exc:
        return {}, {"*": f"the stand-in builder cannot be imported ({exc})"}
    reasons = {s.variable: f"no stand-in can be built: {s.none}" for s in standins() if s.none}
    return image_overrides(), reasons


def choose_images(client: docker.DockerClient, upstream: dict[str, str]) -> dict[str, ImageChoice]:
    built, reasons = _standins()
    choices = {}
    for variable, ref in upstream.items():
        if _present(client, ref):
            choices[variable] = ImageChoice(variable, ref, ref)
        elif variable in built and _present(client, built[variable]):
            choices[variable] = ImageChoice(variable, ref, built[variable])
        else:
            reason = reasons.get(variable) or reasons.get("*") or "no stand-in has been built"
            choices[variable] = ImageChoice(
                variable, ref, None, f"{ref} cannot be pulled here and {reason}"
            )
    return choices
