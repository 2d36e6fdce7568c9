"""Grafana's and n8n's data directories moved between their data node and this machine, when
the shared stack's data node is not this engine's node.

Locally, backup.shared takes a directory whole from the running container (get_archive) and
restore.shared writes it back under DATA_ROOT. Neither reaches another node: exec,
get_archive and put_archive talk to this engine's containers only, and the directory is on
the data node's disk. So the bytes cross the overlay network, between two short-lived
services that both exist only for the transfer:

- a companion on this node (swarm/companion.pinned) with the Postgres image, on the target
  service's networks, runs a one-connection TCP listener (core Perl's IO::Socket::INET,
  started by exec): for a backup it copies what it receives to the exec's stdout, which is
  streamed into a file here; for a restore it sends a tar file that was copied into it;
- a one-off job on the data node (swarm/datadirs.run_job, as the directory creation and the
  Redis restore: the Postgres image, the host's / at /host, pinned by node id, on the same
  networks) connects to tasks.<companion> with bash's /dev/tcp and, for a backup, streams
  `tar -c --numeric-owner` of the directory; for a restore it moves the directory aside,
  untars the stream into a fresh one (owners and modes as the backup recorded them), and if
  any step fails it removes what it wrote and moves the old directory back.

Both ends hash the stream with sha256: for a backup the job sends its digest on a second
connection once the archive is sent, and this side compares it with the digest of what
arrived; for a restore the job compares what it received with the digest given on its
command line (a digest, never a secret) before it keeps anything.

Why this and not another channel: the service logs of a job are the only other way bytes
leave a node through the API, and Swarm's log streams are lossy for binary data and may
never end (a known defect); a bind mount shared by the nodes cannot be assumed. Why the
Postgres image: its Debian base has bash, GNU tar (numeric owners, modes, GNU's delayed
directory modes), coreutils' sha256sum and perl-base (Essential packages), and the
deploy's directory jobs already use it, so it is on every node that holds data. Nothing on
the data node is deleted: the previous directory stays next to the new one, moved aside,
and the output says where. No secret is involved: the directories travel as files.
"""

from __future__ import annotations

import contextlib
import hashlib
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import docker

from infra import engine
from infra.backup.containers import _exec, _last_line, put_file
from infra.backup.manifest import BackupError, Report
from infra.swarm import companion, datadirs
from infra.swarm.placement import hostname

PORT = 7070  # the companion's listener, on the overlay only (nothing is published)
TRANSFER_TIMEOUT = 600.0  # seconds the listener waits for the job's connection and data

# The companion's listener: $ARGV[0] the port, $ARGV[1] "receive" (the data to stdout, then
# a second connection's line, the sender's digest, to stderr) or "send" (the file $ARGV[2]).
# "listening" on stderr tells this side it may start the job.
LISTENER = r"""
use strict; use IO::Socket::INET;
my ($port, $mode, $file, $timeout) = @ARGV;
$SIG{ALRM} = sub { die "no transfer from the data node within $timeout s\n" };
alarm $timeout;
my $server = IO::Socket::INET->new(LocalPort => $port, Listen => 1, ReuseAddr => 1)
  or die "cannot listen on port $port: $!\n";
print STDERR "listening\n";
my $conn = $server->accept or die "accept failed: $!\n";
binmode $conn; binmode STDOUT;
my $buffer;
sub put {
  my ($fh, $n) = @_; my $off = 0;
  while ($off < $n) {
    my $w = syswrite($fh, $buffer, $n - $off, $off);
    die "writing the stream failed: $!\n" unless defined $w;
    $off += $w;
  }
}
if ($mode eq "receive") {
  while (1) {
    my $n = sysread($conn, $buffer, 65536);
    die "reading the stream failed: $!\n" unless defined $n;
    last if $n == 0;
    put(\*STDOUT, $n);
  }
  close $conn;
  my $digest = $server->accept or die "the data node sent no digest\n";
  my $line = <$digest>;
  print STDERR "sha256 ", (defined $line ? $line : "none\n");
} else {
  open(my $in, "<", $file) or die "cannot open $file: $!\n";
  binmode $in;
  while (my $n = sysread($in, $buffer, 65536)) {
    put($conn, $n);
  }
  close $conn;
}
"""


def _connect(redirect: str) -> str:
    """Shell that opens `redirect` (e.g. "3>") on the companion with bash's /dev/tcp. The
    companion's DNS name may take a moment to reach the data node's resolver, so it is tried
    for some 30 s."""
    return (
        f'i=0; until exec {redirect}"/dev/tcp/$host/$port"; do i=$((i+1)); '
        'if [ "$i" -ge 150 ]; then echo "cannot reach $host:$port" >&2; exit 3; fi; '
        "sleep 0.2; done 2>/dev/null; "
    )


# In the job, backup: $1 the directory (a host path), $2 $3 the companion's host and port.
# tar's exit 1 means a file changed while it was read; the SQLite check on this side takes
# the copy again if that matters.
SEND_DIRECTORY = (
    'set -u; d="/host$1"; host="$2"; port="$3"; '
    'if [ ! -d "$d" ]; then echo "$1 is not a directory on this node" >&2; exit 2; fi; '
    + _connect("3>")
    + 'f=$(mktemp -u /tmp/nextcandle-sum.XXXXXX); mkfifo "$f"; '
    'sha256sum < "$f" > "$f.sum" & summer=$!; '
    'tar -C "${d%/*}" -c --numeric-owner --warning=no-file-changed "${d##*/}" '
    '| tee "$f" >&3; codes="${PIPESTATUS[*]}"; exec 3>&-; wait "$summer"; '
    'set -- $codes; if [ "$1" -gt 1 ] || [ "$2" != 0 ]; then '
    'echo "tar ended with exit $1, the stream with exit $2" >&2; exit 4; fi; '
    + _connect("4>")
    + 'cut -d" " -f1 "$f.sum" >&4; exec 4>&-; echo "sent $(cut -d" " -f1 "$f.sum")"'
)

# In the job, restore: $1 the directory, $2 where it goes aside (host paths), $3 $4 the
# companion, $5 the sha256 the stream must have. The trap is set only once the directory is
# aside, so a failure before that changes nothing.
RECEIVE_DIRECTORY = (
    'set -u; d="/host$1"; aside="/host$2"; shown="$2"; host="$3"; port="$4"; want="$5"; ok=0; '
    'if [ ! -d "$d" ]; then echo "$1 is not a directory on this node" >&2; exit 2; fi; '
    + _connect("3<")
    + 'mv "$d" "$aside" || { echo "cannot move $1 aside" >&2; exit 7; }; '
    'trap \'if [ "$ok" != 1 ]; then rm -rf "$d"; mv "$aside" "$d"; '
    'echo "the previous data is back in place" >&2; fi\' EXIT; '
    'f=$(mktemp -u /tmp/nextcandle-sum.XXXXXX); mkfifo "$f"; '
    'sha256sum < "$f" > "$f.sum" & summer=$!; '
    'tee "$f" <&3 | tar -C "${d%/*}" -x --numeric-owner --same-owner --same-permissions -f -; '
    'codes="${PIPESTATUS[*]}"; exec 3<&-; wait "$summer"; got=$(cut -d" " -f1 "$f.sum"); '
    'set -- $codes; if [ "$1" != 0 ] || [ "$2" != 0 ]; then '
    'echo "the stream ended with exit $1, tar with exit $2" >&2; exit 4; fi; '
    'if [ "$got" != "$want" ]; then echo "the stream arrived with sha256 $got, '
    'not the $want that was sent" >&2; exit 5; fi; '
    'if [ ! -d "$d" ]; then echo "the archive held no $1" >&2; exit 6; fi; '
    'ok=1; echo "moved aside $shown"'
)


@dataclass(frozen=True)
class RemoteData:
    """A shared service's data directory on another node than this engine's."""

    service: str
    node: object  # a docker Node
    directory: str  # the host path of the bind mount, on that node
    networks: tuple[str, ...]  # the service's networks (ids): where the job and companion meet

    @property
    def where(self) -> str:
        return f"{self.directory} on node {hostname(self.node)}"


def data_mount(spec: dict, service: str, target: str) -> str:
    """The host path bind-mounted at `target` in the service's live spec."""
    for mount in spec["TaskTemplate"]["ContainerSpec"].get("Mounts") or []:
        if mount.get("Target") == target and mount.get("Type") == "bind":
            return mount["Source"]
    raise BackupError(
        f"{service} has no data directory bind-mounted at {target}. Deploy the shared stack "
        "again (invoke deploy.shared), then retry."
    )


def remote_data(client: docker.DockerClient, service: str, target: str) -> RemoteData | None:
    """Where the service's data is when its task runs on another node; None when it runs
    here (get_archive reaches it) or has no running task (EngineError)."""
    container_id, node_id = engine.running_task(client, service)
    if container_id:
        return None
    spec = client.api.inspect_service(service)["Spec"]
    networks = tuple(n["Target"] for n in spec["TaskTemplate"].get("Networks") or [])
    if not networks:
        raise BackupError(
            f"{service} is on no overlay network, so its data cannot leave its node. Deploy "
            "the shared stack again (invoke deploy.shared), then retry."
        )
    return RemoteData(
        service, client.nodes.get(node_id), data_mount(spec, service, target), networks
    )


def send_command(directory: str, host: str) -> list[str]:
    return ["bash", "-c", SEND_DIRECTORY, "backup", directory, host, str(PORT)]


def receive_command(directory: str, aside: str, host: str, digest: str) -> list[str]:
    return ["bash", "-c", RECEIVE_DIRECTORY, "restore", directory, aside, host, str(PORT), digest]


def listener_command(mode: str, file: str = "", timeout: float = TRANSFER_TIMEOUT) -> list[str]:
    return ["perl", "-e", LISTENER, str(PORT), mode, file or "-", str(int(timeout))]


class _Listener(threading.Thread):
    """The companion's listener, run by exec in a thread while the job runs; its stdout goes
    to `sink` (a file, or None)."""

    def __init__(self, client, reach, command: list[str], sink=None):
        super().__init__(daemon=True)
        self.client, self.reach, self.command, self.sink = client, reach, command, sink
        self.result: tuple[int, bytes, bytes] | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            api = self.client.api
            exec_id = api.exec_create(self.reach.id, self.command, stdout=True, stderr=True)["Id"]
            err: list[bytes] = []
            for out, chunk in api.exec_start(exec_id, stream=True, demux=True):
                if out and self.sink is not None:
                    self.sink.write(out)
                if chunk:
                    err.append(chunk)
                    if b"listening" in b"".join(err):
                        self.ready.set()
            self.result = (api.exec_inspect(exec_id)["ExitCode"], b"", b"".join(err))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            self.error = exc
        finally:
            self.ready.set()

    def wait_ready(self, timeout: float) -> None:
        if not self.ready.wait(timeout) or self.result is not None or self.error is not None:
            raise BackupError(
                "the helper container on this node could not listen for the data node's "
                f"transfer ({self._why()}); nothing changed."
            )

    def finish(self, timeout: float) -> tuple[int, bytes]:
        self.join(timeout)
        if self.is_alive():
            raise BackupError(f"the transfer from the data node did not end in {timeout:.0f} s.")
        if self.error is not None:
            raise BackupError(f"the transfer broke off ({self._why()}).")
        assert self.result is not None
        return self.result[0], self.result[2]

    def _why(self) -> str:
        if self.error is not None:
            return " ".join(str(self.error).split())[:200]
        if self.result is not None:
            return _last_line(self.result[2])
        return "no answer"


def _digest_line(stderr: bytes) -> str:
    for line in stderr.decode(errors="replace").splitlines():
        if line.startswith("sha256 "):
            return line.split(" ", 1)[1].strip()
    return ""


def fetch_directory(
    client: docker.DockerClient,
    remote: RemoteData,
    image: str,
    archive,
    timeout: float = TRANSFER_TIMEOUT,
) -> None:
    """The data directory as a tar stream (its first component the directory's name, as
    get_archive gives it) written to `archive`, a binary file; the sender's and this side's
    sha256 must match."""
    hashed = _Hashing(archive)
    with companion.pinned(client, remote.service, image, list(remote.networks)) as helper:
        listener = _Listener(client, helper, listener_command("receive", timeout=timeout), hashed)
        listener.start()
        listener.wait_ready(60)
        datadirs.run_job(
            client,
            remote.node,
            "shared-backup",
            image,
            send_command(remote.directory, f"tasks.{helper.companion}"),
            timeout=timeout,
            failed=lambda error: f"reading {remote.where} failed ({error}).",
            late=lambda states: (
                f"reading {remote.where} did not finish in {timeout:.0f} s (tasks: {states})."
            ),
            then=lambda *_: None,
            networks=remote.networks,
        )
        code, stderr = listener.finish(timeout)
    sent = _digest_line(stderr)
    if code != 0 or not sent:
        raise BackupError(f"the copy of {remote.where} broke off ({_last_line(stderr)}).")
    if sent != hashed.hexdigest():
        raise BackupError(
            f"the copy of {remote.where} arrived with other bytes than were sent (sha256 "
            "differs). Run the backup again."
        )


class _Hashing:
    """A file that hashes what is written to it."""

    def __init__(self, file):
        self.file, self.sha = file, hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.sha.update(data)
        self.file.write(data)

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def write_archive(destination: Path, name: str, files: Path, entries: dict[str, dict]) -> str:
    """A tar of the backup's entries (under `name`/, with the modes and owners the backup
    recorded) in `destination`; its sha256."""
    order = sorted(entries, key=lambda k: (len(PurePosixPath(k).parts), k))
    now = time.time()  # the backup keeps no times; the files' own are when it was taken
    with tarfile.open(destination, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for key in order:
            entry = entries[key]
            info = tarfile.TarInfo(f"{name}/{key}" if key else name)
            info.mode, info.uid, info.gid = entry["mode"], entry["uid"], entry["gid"]
            info.uname = info.gname = ""  # numeric owners only: the node's names may differ
            info.mtime = now
            if entry["type"] == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry["type"] == "file":
                path = files / key
                info.size, info.mtime = path.stat().st_size, path.stat().st_mtime
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                info.type, info.linkname = tarfile.SYMTYPE, entry["target"]
                tar.addfile(info)
    with destination.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def replace_directory(
    client: docker.DockerClient,
    remote: RemoteData,
    image: str,
    archive: Path,
    digest: str,
    aside: str,
    report: Report,
    timeout: float = TRANSFER_TIMEOUT,
) -> None:
    """On the data node: `remote.directory` moved to `aside`, the archive (sha256 `digest`)
    unpacked in its place; on any failure the old directory is put back. The service must
    be stopped."""
    with companion.pinned(client, remote.service, image, list(remote.networks)) as helper:
        _check_exec(client, helper, ["mkdir", "-p", "/tmp/nextcandle-transfer"])
        put_file(helper.container, "/tmp/nextcandle-transfer", archive, "data.tar", 0o600)
        listener = _Listener(
            client,
            helper,
            listener_command("send", "/tmp/nextcandle-transfer/data.tar", timeout),
        )
        listener.start()
        listener.wait_ready(60)
        report(f"restore shared: sending the backup's {remote.service} files to node "
               f"{hostname(remote.node)}")  # fmt: skip
        datadirs.run_job(
            client,
            remote.node,
            "shared-restore",
            image,
            receive_command(remote.directory, aside, f"tasks.{helper.companion}", digest),
            timeout=timeout,
            failed=lambda error: (
                f"replacing {remote.where} failed ({error}); its previous data stays there."
            ),
            late=lambda states: (
                f"replacing {remote.where} did not finish in {timeout:.0f} s (tasks: "
                f"{states}). Check {remote.directory} and {aside} there."
            ),
            then=lambda *_: None,
            networks=remote.networks,
        )
        with contextlib.suppress(BackupError):
            listener.finish(30)  # it ended when the job read the last byte


def _check_exec(client, reach, command: list[str]) -> None:
    code, out, err = _exec(client, reach, command)
    if code != 0:
        raise BackupError(f"the helper container on this node failed: {_last_line(err or out)}")
