"""Which image each platform service runs in the acceptance swarm, and which have none.

Preference: the upstream image if this machine's engine has it (a GitHub-hosted runner pulls
them), else the stand-in built by tests/images, else nothing, with the reason from the
stand-in map. A service with no image is left out of the deploy and its tests skip, naming
the image; it is never counted as passed.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import docker
import yaml
from docker.errors import DockerException, ImageNotFound

from infra import catalog, plan
from infra.settings import STACKS_DIR, load_settings

# Set in the GitHub workflow, which pulls the upstream images: there a test that would skip
# for want of an image fails instead.
REQUIRE_IMAGES = "ACCEPTANCE_REQUIRE_IMAGES"
# What the suite deploys: every stack of `deploy.all`, core without the tunnel
# (Platform.deploy passes tunnel=False); never the runner.
SUITE_STACKS = catalog.DEPLOY_ALL
# Images the suite runs itself, beside the services: its swarm's nodes.
SUITE_TOOLS = ("DIND_IMAGE",)
# Images the suite runs that are on no registry: a machine that can pull builds them from
# their Dockerfile (its base images it can pull); here their stand-ins run. Variable -> the
# directory of the Dockerfile, from the repository's root.
SUITE_BUILDS = {"EXAMPLE_APP_IMAGE": "examples/app"}


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


def missing_image_outcome(environ: Mapping[str, str] = os.environ) -> str:
    """What a test does when its image is missing: "skip", or "fail" where
    ACCEPTANCE_REQUIRE_IMAGES=true (a machine that pulls every image)."""
    value = environ.get(REQUIRE_IMAGES, "").strip().lower()
    if value in ("", "false", "0", "no", "off"):
        return "skip"
    if value in ("true", "1", "yes", "on"):
        return "fail"
    raise ValueError(f"{REQUIRE_IMAGES}={value!r} is not valid. Valid: true, false (default).")


def suite_image_variables(stacks_dir: Path = STACKS_DIR) -> list[str]:
    """The *_IMAGE variables of every service the suite deploys, and of its own tools."""
    found: list[str] = []
    for stack in SUITE_STACKS:
        for path in plan.stack_files(stack, tunnel=False, stacks_dir=stacks_dir):
            for spec in (yaml.safe_load(path.read_text()).get("services") or {}).values():
                match = re.search(r"\$\{(\w+_IMAGE)", str(spec.get("image", "")))
                if match and match.group(1) not in found:
                    found.append(match.group(1))
    return found + [tool for tool in SUITE_TOOLS if tool not in found]


def node_images(choices: Mapping[str, ImageChoice]) -> list[str]:
    """The image references every dind node's engine holds: each chosen image but the node's
    own."""
    return sorted({c.ref for v, c in choices.items() if c.ref and v != "DIND_IMAGE"})


def prepare_seed() -> str:
    """Fill the kept image seed the suite's swarms start from, as a session's first swarm
    would (tests/acceptance/dind.py), so that session finds it ready; what was done."""
    from tests.acceptance.dind import DindSwarm  # the suite's own; not needed for the lists

    outer = docker.from_env(timeout=300)
    choices = choose_images(outer, dict(load_settings().images))
    if choices["DIND_IMAGE"].ref is None:
        return f"no seed: DIND_IMAGE: {choices['DIND_IMAGE'].reason}"
    refs = node_images(choices)
    swarm = DindSwarm(choices["DIND_IMAGE"].ref, 0, Path(), (), outer=outer)
    path = swarm.image_seed(refs)
    return f"seed of {len(refs)} images ready at {path}" if path else "no seed: not root"


def pull_list(images: Mapping[str, str], stacks_dir: Path = STACKS_DIR) -> list[str]:
    """The upstream references a machine that can pull must have for the whole suite."""
    return [images[variable] for variable in suite_image_variables(stacks_dir)]


def build_list(images: Mapping[str, str]) -> list[str]:
    """`<reference> <directory>` of each image a machine that can pull builds instead."""
    return [f"{images[variable]} {directory}" for variable, directory in SUITE_BUILDS.items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.acceptance.images")
    parser.add_argument(
        "--pull-list",
        action="store_true",
        help="print the image references the acceptance suite runs, one a line",
    )
    parser.add_argument(
        "--build-list",
        action="store_true",
        help="print `<reference> <Dockerfile directory>` of the images it builds, one a line",
    )
    parser.add_argument(
        "--seed",
        action="store_true",
        help="fill the kept image seed of the dind nodes now (the suite's first swarm would)",
    )
    arguments = parser.parse_args(argv)
    if arguments.seed:
        # A stop (CI's cleanup) ends the fill through its `finally`: no builder left behind.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
        try:
            print(prepare_seed(), flush=True)
        except (DockerException, RuntimeError) as exc:
            parser.exit(1, f"error: the image seed could not be filled: {exc}\n")
    elif arguments.build_list:
        print("\n".join(build_list(load_settings().images)))
    elif arguments.pull_list:
        print("\n".join(pull_list(load_settings().images)))
    else:
        parser.error("nothing to do: give --pull-list, --build-list or --seed")


if __name__ == "__main__":
    main()
