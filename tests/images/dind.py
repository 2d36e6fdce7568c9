"""How to start the dind stand-in on this kind of machine (CI-MACHINE.md): --privileged fails
(the machine lacks CAP_SYS_RESOURCE), every other capability added one by one works."""

from __future__ import annotations

# Every capability Docker 20.10 knows, except SYS_RESOURCE (20.10 rejects BPF, PERFMON and
# CHECKPOINT_RESTORE as unknown; the inner engine does not need them).
CAPABILITIES = (
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "SYSLOG",
    "WAKE_ALARM",
)


def create(
    client,
    image: str,
    docker_volume: str,
    *,
    ports: dict | None = None,
    binds: list[str] | None = None,
    **create_kwargs,
):
    """Create (not start) a dind node with the docker SDK. `docker_volume` is the named volume
    for its /var/lib/docker; `ports` maps container ports to host bindings as in
    containers.run(ports=...); `binds` adds "host:container:mode" mounts. Other keyword
    arguments go to APIClient.create_container."""
    host_config = client.api.create_host_config(
        cap_add=list(CAPABILITIES),
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        binds=[
            "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            f"{docker_volume}:/var/lib/docker:rw",
            *(binds or []),
        ],
        port_bindings=ports or None,
    )
    # `--security-opt systempaths=unconfined` is a CLI shorthand the SDK lacks: no masked and
    # no read-only paths under /proc and /sys.
    host_config["MaskedPaths"] = []
    host_config["ReadonlyPaths"] = []
    exposed = [
        (int(str(p).split("/")[0]), str(p).split("/")[1] if "/" in str(p) else "tcp")
        for p in ports or ()
    ]
    created = client.api.create_container(
        image, host_config=host_config, ports=exposed or None, **create_kwargs
    )
    return client.containers.get(created["Id"])


def cli_options(docker_volume: str) -> list[str]:
    """The same for `docker run`."""
    options = [f"--cap-add={cap}" for cap in CAPABILITIES]
    options += [
        "--security-opt=seccomp=unconfined",
        "--security-opt=apparmor=unconfined",
        "--security-opt=systempaths=unconfined",
        "-v",
        "/sys/fs/cgroup:/sys/fs/cgroup:rw",
        "-v",
        f"{docker_volume}:/var/lib/docker",
    ]
    return options
