"""The platform's invoke tasks: this file only assembles namespaces from infra/tasks."""

from invoke import Collection

from infra.tasks import (
    alerts,
    app,
    backup,
    deploy,
    firewall,
    history,
    lock,
    logs,
    restore,
    rollback,
    status,
    stop,
    swarm,
)
from infra.tasks import secrets_ as secrets

ns = Collection()
ns.add_collection(Collection.from_module(swarm), "swarm")
ns.add_collection(Collection.from_module(secrets), "secrets")
ns.add_collection(Collection.from_module(deploy), "deploy")
ns.add_collection(Collection.from_module(stop), "stop")
ns.add_collection(Collection.from_module(firewall), "firewall")
ns.add_collection(Collection.from_module(backup), "backup")
ns.add_collection(Collection.from_module(alerts), "alerts")
ns.add_collection(Collection.from_module(restore), "restore")
ns.add_collection(Collection.from_module(lock), "lock")
ns.add_collection(Collection.from_module(rollback), "rollback")
ns.add_collection(Collection.from_module(app), "app")
ns.add_task(status.status, "status")
ns.add_task(logs.logs, "logs")
ns.add_task(history.history, "history")
ns.configure({"run": {"echo": False}})
