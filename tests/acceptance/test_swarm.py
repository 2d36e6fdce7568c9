"""The swarm's nodes: data placed by label, swarm.status and its quorum, join tokens, drain.

On the suite's one-node swarm the first deploy labels the only node; with `--nodes=3`
(`nox -s acceptance_nodes`) the manager holds the environments' data and a worker shared's
(conftest labels them, as an operator would), and prod's is moved to that worker before prod
is first deployed, so Postgres must land there. Backups, restores, a rotation and the alerts
run from the manager against those tasks on the worker. A worker is lost and comes back with
no row, key or object lost; then both workers are promoted for the three-manager variant,
which loses one manager and keeps working.
"""

from __future__ import annotations

import json
import stat
import time
import uuid

import pytest
import redis

from infra import converge, engine
from infra.catalog import DATA_TARGETS, ENVIRONMENTS, data_label
from infra.swarm import companion, datadirs, placement
from tests.acceptance.test_backup import _connect
from tests.acceptance.test_backup_offsite import (
    OBJECTS,
    PROBE,
    _object_state,
    _remove_moved_aside,
    assert_gone_bucket_restored,
    assert_probe_restored,
    change_after_backup,
    seed_and_back_up,
)
from tests.acceptance.test_rotation import _assert_finished, _rotate, rotate_n8n_password


@pytest.fixture(scope="module")
def dev(platform):
    platform.require("POSTGRES_IMAGE")
    platform.require("REDIS_IMAGE")
    platform.deploy("dev")
    return platform


def _node_of(platform, service: str) -> str:
    tasks = platform.client.services.get(service).tasks(filters={"desired-state": "running"})
    running = [t for t in tasks if t["Status"]["State"] == "running"]
    assert len(running) == 1, f"{service}: {len(running)} running tasks"
    return running[0]["NodeID"]


def test_the_node_holding_dev_data_is_labelled_and_runs_its_postgres(dev):
    holders = placement.holders(dev.client.nodes.list(), "dev")
    assert len(holders) == 1, [placement.hostname(n) for n in holders]
    assert _node_of(dev, "dev_postgres") == holders[0].id
    assert _node_of(dev, "dev_redis") == holders[0].id
    constraints = dev.client.services.get("dev_postgres").attrs["Spec"]["TaskTemplate"][
        "Placement"
    ]["Constraints"]
    assert f"node.labels.{data_label('dev')} == true" in constraints
    assert not any("node.role" in c for c in constraints), constraints


def test_swarm_status_shows_each_node_its_data_and_the_quorum(dev):
    result = dev.invoke("swarm.status")
    assert result.returncode == 0, result.stderr
    for node in dev.client.nodes.list():
        assert placement.hostname(node) in result.stdout
    assert "dev_postgres" in result.stdout  # the stateful services the data node holds
    assert "quorum: healthy: 1 of 1 managers reachable" in result.stdout, result.stdout


def test_a_label_for_data_another_node_holds_is_refused(dev):
    if len(dev.client.nodes.list()) < 2:
        # One node: relabelling itself is allowed; the refusal needs a second node.
        result = dev.invoke("swarm.label", "--node=no-such-node", "--data=dev")
        assert result.returncode == 1
        assert "is no node of this swarm" in result.stderr
        assert "Traceback" not in result.stderr
        return
    holder = placement.holders(dev.client.nodes.list(), "dev")[0]
    other = next(n for n in dev.client.nodes.list() if n.id != holder.id)
    result = dev.invoke("swarm.label", f"--node={placement.hostname(other)}", "--data=dev")
    assert result.returncode == 1
    assert f"node {placement.hostname(holder)} already holds dev's data" in result.stderr
    other.reload()
    assert data_label("dev") not in (other.attrs["Spec"].get("Labels") or {})


def test_join_token_goes_to_a_private_file_never_to_the_output(dev, tmp_path):
    path = tmp_path / "worker.token"
    result = dev.invoke("swarm.join-token", "--role=worker", f"--file={path}")
    assert result.returncode == 0, result.stderr
    token = path.read_text().strip()
    assert token == dev.client.swarm.attrs["JoinTokens"]["Worker"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token not in result.stdout + result.stderr
    assert "invoke swarm.join --manager=" in result.stdout


def test_draining_the_data_node_is_refused_naming_its_services_and_changes_nothing(dev):
    holder = placement.holders(dev.client.nodes.list(), "dev")[0]
    result = dev.invoke("swarm.drain", f"--node={placement.hostname(holder)}")
    assert result.returncode == 1
    assert "dev_postgres" in result.stderr and "--force" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    holder.reload()
    assert holder.attrs["Spec"]["Availability"] == "active"


def test_prod_deployed_with_its_data_on_a_worker_runs_there(platform):
    """Needs a worker: `--nodes=3`. The data directories are created on the worker by a
    one-off job, since the deploy runs on the manager."""
    platform.require("POSTGRES_IMAGE")
    platform.require("REDIS_IMAGE")
    workers = [n for n in platform.client.nodes.list() if n.attrs["Spec"]["Role"] == "worker"]
    if not workers:
        pytest.skip("needs a worker node: run with --nodes=3 (nox -s acceptance_nodes)")
    if "prod" in platform.deployed:
        pytest.skip("prod was deployed earlier in this session: its data cannot move")
    # With shared's data (conftest), so the other worker holds none for the node-loss tests.
    worker = next((n for n in workers if "shared" in placement.held_targets(n)), workers[-1])
    manager = next(n for n in platform.client.nodes.list() if "prod" in placement.held_targets(n))
    placement.set_labels(platform.client, manager, ["prod"], remove=True)
    placement.set_labels(platform.client, worker, ["prod"])
    lines = platform.apply("prod")
    assert _node_of(platform, "prod_postgres") == worker.id
    assert _node_of(platform, "prod_redis") == worker.id
    # prod's directories did not exist: they were made on the worker, by the job.
    made_there = [line for line in lines if f"on node {placement.hostname(worker)}" in line]
    assert any(line.endswith(f"/prod/postgres on node {placement.hostname(worker)}")
               for line in made_there), lines  # fmt: skip


def test_a_container_on_the_manager_reaches_prod_postgres_on_the_worker_by_its_dns_name(platform):
    """tasks.<service> names and the overlay carry traffic across nodes: a container on the
    manager, on prod's network, resolves and reaches the Postgres that runs on a worker."""
    image = platform.require("POSTGRES_IMAGE")  # has getent and pg_isready
    node = (
        _node_of(platform, "prod_postgres")
        if "prod" in engine.deployed_stacks(platform.client)
        else ""
    )
    here = platform.client.info()["Swarm"]["NodeID"]
    if not node or node == here:
        pytest.skip("needs prod's Postgres on another node than the manager: --nodes=3")
    output = platform.client.containers.run(
        image,
        entrypoint=["bash", "-c"],
        command=["getent hosts tasks.prod_postgres && pg_isready -h tasks.prod_postgres -t 20"],
        network="prod_backend",
        labels={"org.nextcandle.acceptance": "swarm-probe"},
        remove=True,
    ).decode()
    task = platform.client.services.get("prod_postgres").tasks(
        filters={"desired-state": "running"}
    )[0]
    addresses = {a["Addresses"][0].split("/")[0] for a in task["NetworksAttachments"]}
    assert any(line.split()[0] in addresses for line in output.splitlines() if line), output
    assert "accepting connections" in output, output


def _index_of(platform, node_id: str) -> int:
    for index, member in enumerate(platform.swarm.nodes):
        if member.client.info()["Swarm"]["NodeID"] == node_id:
            return index
    raise AssertionError(f"no dind node runs swarm node {node_id}")


# --- data operations from the manager on prod's data on a worker (point 3) ----------------------

REMOTE_ROWS = 300
REMOTE_KEYS = {"remote:a": "1", "remote:b": "two", "remote:c": "drei"}


@pytest.fixture(scope="module")
def prod_on_worker(platform):
    """prod deployed with its data on a worker (the test above), seeded through its task on
    that worker; skips on one node."""
    platform.require("POSTGRES_IMAGE")
    platform.require("REDIS_IMAGE")
    here = platform.client.info()["Swarm"]["NodeID"]
    if "prod" not in engine.deployed_stacks(platform.client):
        pytest.skip("needs prod deployed with its data on a worker: --nodes=3")
    if _node_of(platform, "prod_postgres") == here:
        pytest.skip("needs prod's Postgres on another node than the manager: --nodes=3")
    _prod_sql(platform, "DROP TABLE IF EXISTS remote_items")
    _prod_sql(platform, "CREATE TABLE remote_items (id int PRIMARY KEY, note text)")
    _prod_sql(
        platform,
        f"INSERT INTO remote_items SELECT i, md5(i::text) FROM generate_series(1, {REMOTE_ROWS}) i",  # noqa: S608
    )
    _prod_redis(platform, "FLUSHALL")
    for key, value in REMOTE_KEYS.items():
        _prod_redis(platform, "SET", key, value)
    return platform


def _task_container(platform, service: str):
    """The running container of `service` on its node, through that node's own engine."""
    member = platform.swarm.nodes[_index_of(platform, _node_of(platform, service))]
    found = member.client.containers.list(
        filters={"label": f"com.docker.swarm.service.name={service}", "status": "running"}
    )
    assert found, f"{service}: no running container on its node"
    return found[0]


def _prod_sql(platform, sql: str, password: str = "") -> str:
    values = platform.secrets()
    code, out = _task_container(platform, "prod_postgres").exec_run(
        ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
         "-U", values["prod_postgres_user"], "-d", values["prod_postgres_db"], "-c", sql],
        environment={"PGPASSWORD": password or values["prod_postgres_password"]},
    )  # fmt: skip
    assert code == 0, out.decode(errors="replace")
    return out.decode().strip()


def _prod_redis(platform, *command: str) -> str:
    code, out = _task_container(platform, "prod_redis").exec_run(
        ["redis-cli", *command],
        environment={"REDISCLI_AUTH": platform.secrets()["prod_redis_password"]},
    )
    assert code == 0, out
    return out.decode().strip()


def _prod_state(platform) -> tuple[str, dict[str, str]]:
    rows = _prod_sql(
        platform,
        "SELECT count(*) || ' ' || md5(string_agg(t::text, ',' ORDER BY id)) FROM remote_items t",
    )
    keys = sorted(_prod_redis(platform, "KEYS", "*").split())
    return rows, {key: _prod_redis(platform, "GET", key) for key in keys}


def _no_companion_left(platform) -> None:
    left = platform.client.services.list(filters={"label": companion.COMPANION_LABEL})
    assert not left, [s.name for s in left]


@pytest.fixture(scope="module")
def remote_backup(prod_on_worker, tmp_path_factory):
    root = tmp_path_factory.mktemp("remote-backups")
    state = _prod_state(prod_on_worker)
    made = prod_on_worker.invoke("backup.env", "--name=prod", BACKUP_ROOT=str(root))
    assert made.returncode == 0, made.stdout + made.stderr
    (source,) = sorted((root / "prod").iterdir())
    return {"root": root, "source": source, "state": state, "output": made.stdout}


def test_backup_of_prod_on_a_worker_is_made_from_the_manager(prod_on_worker, remote_backup):
    manifest = json.loads((remote_backup["source"] / "manifest.json").read_text())
    assert manifest["postgres"]["tables"]["public.remote_items"] == REMOTE_ROWS
    assert manifest["redis"]["keys"] == len(REMOTE_KEYS)
    assert "prod_postgres runs on another node" in remote_backup["output"]
    _no_companion_left(prod_on_worker)


def test_drill_of_the_remote_backup_passes_from_the_manager(prod_on_worker, remote_backup):
    """The drill needs only this engine: its throwaway containers run here, from the backup
    files here."""
    drilled = prod_on_worker.invoke(
        "backup.drill", "--name=prod", BACKUP_ROOT=str(remote_backup["root"])
    )
    assert drilled.returncode == 0, drilled.stdout + drilled.stderr
    assert "row counts and checksums as the manifest says" in drilled.stdout, drilled.stdout


def test_restore_into_prod_on_a_worker_brings_back_its_rows_and_keys(prod_on_worker, remote_backup):
    platform = prod_on_worker
    _prod_sql(platform, "DELETE FROM remote_items WHERE id > 100")
    _prod_redis(platform, "DEL", "remote:a")
    _prod_redis(platform, "SET", "remote:after-backup", "x")
    assert _prod_state(platform) != remote_backup["state"]
    restored = platform.invoke(
        "restore.env", "--name=prod", f"--from={remote_backup['source']}", "--yes",
        BACKUP_ROOT=str(remote_backup["root"]),
    )  # fmt: skip
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert _prod_state(platform) == remote_backup["state"]
    _no_companion_left(platform)
    # The previous Redis files are kept aside on the worker, and its data is in its AOF:
    # a restart of Redis loads the same keys.
    worker = platform.swarm.nodes[_index_of(platform, _node_of(platform, "prod_redis"))]
    parent = str(platform.settings.data_root / "prod")
    code, out = worker.container.exec_run(["ls", parent])
    assert code == 0 and "redis.before-restore-" in out.decode(), out
    engine.restart_service(platform.client, "prod_redis")
    converge.wait_converged(platform.client, "prod", changed={"prod_redis"}, timeout=180)
    assert _prod_state(platform) == remote_backup["state"]


def test_rotating_prods_postgres_password_on_a_worker_works(prod_on_worker):
    platform = prod_on_worker
    old = platform.secrets()["prod_postgres_password"]
    rotated = platform.invoke("secrets.rotate", "--key=prod_postgres_password")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    new = platform.secrets()["prod_postgres_password"]
    assert new != old
    assert _prod_sql(platform, "SELECT 1", password=new) == "1"
    values = platform.secrets()
    code, out = _task_container(platform, "prod_postgres").exec_run(
        ["psql", "-X", "-At", "-h", "127.0.0.1", "-U", values["prod_postgres_user"],
         "-d", values["prod_postgres_db"], "-c", "SELECT 1"],
        environment={"PGPASSWORD": old},
    )  # fmt: skip
    assert code != 0 and b"password authentication failed" in out, out
    _no_companion_left(platform)


# --- the shared stack's data on a worker, backed up, restored and asked from the manager ---


@pytest.fixture(scope="module")
def shared_on_worker(platform):
    """The shared stack with its data on a worker (conftest labels it before the first
    deploy); skips on one node, before deploying anything, as nothing of it can run there."""
    if len(platform.client.nodes.list()) < 2:
        pytest.skip("needs shared's data on another node than the manager: --nodes=3")
    platform.require("TRAEFIK_IMAGE")
    platform.require("SEAWEEDFS_IMAGE")
    platform.deploy("core")
    platform.deploy("shared")
    here = platform.client.info()["Swarm"]["NodeID"]
    if _node_of(platform, "shared_seaweedfs") == here:
        pytest.skip("needs shared's data on another node than the manager: --nodes=3")
    return platform


def _no_transfer_left(platform) -> None:
    _no_companion_left(platform)
    left = platform.client.services.list(filters={"label": datadirs.JOB_LABEL})
    assert not left, [s.name for s in left]


@pytest.fixture(scope="module")
def shared_remote_round_trip(shared_on_worker, tmp_path_factory):
    """Objects and a file in n8n's data backed up from the manager, both changed, then
    restore.shared --yes from the manager; the time it took is printed."""
    platform = shared_on_worker
    started = time.monotonic()
    seeded = seed_and_back_up(platform, "remote", tmp_path_factory.mktemp("shared-remote-backups"))
    change_after_backup(seeded)
    assert _object_state(seeded.s3, seeded.bucket) != seeded.before
    n8n_data = seeded.n8n_data
    shared_data = set(n8n_data.parent.iterdir())
    restored = platform.invoke(
        "restore.shared", f"--from={seeded.source}", "--yes", BACKUP_ROOT=str(seeded.root)
    )
    assert restored.returncode == 0, restored.stdout + restored.stderr
    print(seeded.made.stdout, restored.stdout, sep="\n")
    took = time.monotonic() - started
    print(f"acceptance: shared backup and restore across nodes in {took:.0f} s")
    yield {
        "seeded": seeded,
        "restore_output": restored.stdout,
        "aside": set(n8n_data.parent.iterdir()) - shared_data,
    }
    _remove_moved_aside(set(n8n_data.parent.iterdir()) - shared_data)
    (n8n_data / PROBE).unlink(missing_ok=True)


def test_shared_backup_from_the_manager_reads_the_worker_and_is_verified(shared_remote_round_trip):
    trip = shared_remote_round_trip
    output = trip["seeded"].made.stdout
    assert "shared_seaweedfs runs on another node" in output, output
    manifest = json.loads((trip["seeded"].source / "manifest.json").read_text())
    assert set(manifest["s3"]["buckets"][trip["seeded"].bucket]["objects"]) == set(OBJECTS)
    if trip["seeded"].n8n:
        assert "n8n's data copied from" in output and "on node" in output, output
        entry = manifest["data"]["n8n"]["entries"][PROBE]
        assert (entry["uid"], entry["gid"], entry["mode"]) == (1000, 1000, 0o640)
        assert (trip["seeded"].source / "n8n" / PROBE).read_bytes() == trip["seeded"].probe
        assert manifest["data"]["n8n"]["sqlite"]["database.sqlite"] == "ok"


def test_restore_shared_from_the_manager_gives_the_objects_back(
    shared_on_worker, shared_remote_round_trip
):
    trip = shared_remote_round_trip
    s3 = shared_on_worker.s3()
    assert _object_state(s3, trip["seeded"].bucket) == trip["seeded"].before
    # The bucket deleted after the backup is made again from the manager.
    assert_gone_bucket_restored(shared_on_worker, trip["seeded"], trip["restore_output"])
    _no_transfer_left(shared_on_worker)


def test_restore_shared_from_the_manager_gives_n8ns_files_back_and_n8n_runs(
    shared_on_worker, shared_remote_round_trip
):
    platform = shared_on_worker
    platform.require("N8N_IMAGE")
    trip = shared_remote_round_trip
    assert_probe_restored(platform, trip["seeded"].probe)
    (aside,) = [p for p in trip["aside"] if p.name.startswith("n8n.before-restore-")]
    assert (aside / "after-backup.txt").read_text() == "not in the backup"
    node = placement.hostname(platform.client.nodes.get(_node_of(platform, "shared_n8n")))
    assert f"{aside} on node {node}" in trip["restore_output"], trip["restore_output"]
    platform.wait_for(
        lambda: platform.web("n8n.localhost", "/healthz").status_code == 200,
        timeout=120,
        what="n8n /healthz after the restore",
    )


def test_alerts_answer_from_the_manager_with_alertmanager_on_the_worker(shared_on_worker):
    platform = shared_on_worker
    platform.require("ALERTMANAGER_IMAGE")
    here = platform.client.info()["Swarm"]["NodeID"]
    assert _node_of(platform, "shared_alertmanager") != here
    result = platform.invoke("alerts")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("alerts: "), result.stdout
    # `invoke status` asks it the same way: a list of alerts, not "unknown" (None).
    status = platform.invoke("status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    assert isinstance(json.loads(status.stdout)["alerts"], list), status.stdout
    _no_companion_left(platform)


def test_rotating_n8ns_password_with_n8n_on_the_worker_works(shared_on_worker):
    """From the manager: n8n rolls on the worker, and the login check runs from a companion
    with n8n's image against tasks.shared_n8n."""
    platform = shared_on_worker
    platform.require("N8N_IMAGE")
    assert _node_of(platform, "shared_n8n") != platform.client.info()["Swarm"]["NodeID"]
    result = rotate_n8n_password(platform)
    assert "5/6 check: shared_n8n accepts the new value and refuses the old one" in (
        result.stdout
    ), result.stdout
    _no_companion_left(platform)


def test_rotating_grafanas_password_with_grafana_on_the_worker_works(shared_on_worker):
    """From the manager, through Grafana's HTTP API from a companion (`grafana cli` there
    would write the companion's own database)."""
    platform = shared_on_worker
    platform.require("GRAFANA_IMAGE")
    assert _node_of(platform, "shared_grafana") != platform.client.info()["Swarm"]["NodeID"]
    values = platform.secrets()
    user, old = values["grafana_admin_user"], values["grafana_admin_password"]

    def status(password: str) -> int:
        return platform.web("grafana.localhost", "/api/user", auth=(user, password)).status_code

    platform.wait_for(lambda: status(old) == 200, what="Grafana to accept the admin password")
    result = _rotate(platform, "grafana_admin_password")
    new = platform.secrets()["grafana_admin_password"]
    assert "through its HTTP API" in result.stdout, result.stdout
    assert (status(new), status(old)) == (200, 401)
    _assert_finished(platform, result, old)
    _no_companion_left(platform)


def test_a_lost_worker_leaves_every_service_running_on_the_other_nodes(dev):
    """Needs two workers (`--nodes=3`): one without data is stopped (its engine gone, as a
    lost machine), every service runs again elsewhere, `invoke status` names the lost node,
    and once it is back everything is converged."""
    workers = [
        n
        for n in dev.client.nodes.list()
        if n.attrs["Spec"]["Role"] == "worker" and not placement.held_targets(n)
    ]
    if not workers:
        pytest.skip("needs a worker that holds no data: run with --nodes=3")
    lost = workers[0]
    name = placement.hostname(lost)
    index = _index_of(dev, lost.id)
    dev.require("SEAWEEDFS_IMAGE")
    dev.deploy("shared")  # its object store too (node-exporter's module deployed it already)
    stacks = sorted(engine.deployed_stacks(dev.client) & {"core", *DATA_TARGETS})
    written = _write_data(dev)
    dev.swarm.stop_node(index)
    try:

        def marked_down() -> bool:
            lost.reload()
            return lost.attrs["Status"]["State"] == "down"

        dev.wait_for(marked_down, timeout=120, interval=1, what=f"the swarm to mark {name} down")

        def everything_elsewhere() -> bool:
            for stack in stacks:
                for state in converge.stack_states(dev.client, stack):
                    if state.mode == "global":
                        continue  # one task per node: the lost node's cannot run
                    assert state.converged, f"{state.name}: {state.summary()}"
                    assert lost.id not in state.task_nodes, f"{state.name} still on {name}"
            return True

        dev.wait_for(everything_elsewhere, timeout=180, interval=2,
                     what="every service to run on the remaining nodes")  # fmt: skip
        result = dev.invoke("status")
        assert f"node {name} (worker) is down" in result.stdout, result.stdout
    finally:
        dev.swarm.start_node(index)

    def back() -> bool:
        lost.reload()
        assert lost.attrs["Status"]["State"] == "ready"
        for stack in stacks:
            for state in converge.stack_states(dev.client, stack):
                assert state.converged, f"{state.name}: {state.summary()}"
        return True

    dev.wait_for(back, timeout=180, interval=2, what=f"{name} back and every stack converged")
    assert _read_data(dev, written) == written  # no row, key or object lost


def _set_role(node, role: str) -> None:
    node.reload()
    node.update({**node.attrs["Spec"], "Role": role})


def test_three_managers_keep_the_swarm_working_when_one_is_lost(dev):
    """The three-manager variant of the same swarm (`--nodes=3`): both workers promoted, a
    manager without data stopped: the swarm still takes changes and `swarm.status` says no
    more managers can be lost; once it is back, both are workers again, as the module began."""
    workers = [n for n in dev.client.nodes.list() if n.attrs["Spec"]["Role"] == "worker"]
    if len(workers) < 2:
        pytest.skip("needs two workers to promote: run with --nodes=3")
    lost = next(n for n in workers if not placement.held_targets(n))
    index = _index_of(dev, lost.id)

    def quorum(words: str) -> None:
        def says() -> bool:
            result = dev.invoke("swarm.status")
            assert words in result.stdout, result.stdout + result.stderr
            return True

        dev.wait_for(says, timeout=120, interval=2, what=f"quorum: {words}")

    for node in workers:
        _set_role(node, "manager")
    try:
        quorum("healthy: 3 of 3 managers reachable; it can lose 1 more manager(s)")
        dev.swarm.stop_node(index)
        try:
            quorum("healthy: 2 of 3 managers reachable; it can lose no manager")
            # A change the managers must agree on (a raft write) still goes through.
            config = dev.client.configs.create(name=f"quorum-{uuid.uuid4().hex[:8]}", data=b"1")
            config.remove()
        finally:
            dev.swarm.start_node(index)
        quorum("healthy: 3 of 3 managers reachable")
    finally:
        # The manager that was lost goes first: swarmkit refuses to remove a raft member
        # while the remaining ones would lack a quorum of peers it has heard from lately
        # (raft.CanRemoveMember), and a manager just back can be reachable on the node list
        # before the leader's transport marks it active again. Demoting it leaves two
        # managers, of which the one asked is always active; each is retried until it
        # takes, as the raft settles.
        for node in sorted(workers, key=lambda n: n.id != lost.id):
            dev.wait_for(
                lambda node=node: _set_role(node, "worker") or True,
                timeout=60,
                interval=2,
                what=f"{node.attrs['Description']['Hostname']} demoted",
            )
    quorum("healthy: 1 of 1 managers reachable")


def _write_data(platform) -> dict[str, str]:
    """A row in dev's Postgres, a key in its Redis and an object in the store, each holding
    a new token."""
    token = uuid.uuid4().hex
    with _connect(platform, "dev") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS node_loss (token text PRIMARY KEY)")
        conn.execute("INSERT INTO node_loss VALUES (%s)", (token,))
    _redis(platform).set(f"node-loss:{token}", token)
    s3 = platform.s3()
    bucket = f"node-loss-{token[:8]}"
    platform.wait_for(lambda: s3.create_bucket(Bucket=bucket), what="S3 bucket creation")
    s3.put_object(Bucket=bucket, Key="token", Body=token.encode())
    return {"row": token, "key": token, "object": token, "bucket": bucket}


def _read_data(platform, written: dict[str, str]) -> dict[str, str]:
    token = written["row"]
    with _connect(platform, "dev") as conn:
        row = conn.execute("SELECT token FROM node_loss WHERE token = %s", (token,)).fetchone()
    body = platform.s3().get_object(Bucket=written["bucket"], Key="token")["Body"].read()
    return {
        "row": row[0] if row else "",
        "key": (_redis(platform).get(f"node-loss:{token}") or b"").decode(),
        "object": body.decode(),
        "bucket": written["bucket"],
    }


def _redis(platform) -> redis.Redis:
    password = platform.secrets()["dev_redis_password"]
    port = platform.port(ENVIRONMENTS["dev"].redis_port)
    return redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=10)
