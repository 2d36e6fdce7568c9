"""Backups that are proven readable, and restores that check before they change anything.

A backup is a directory BACKUP_ROOT/<env or shared>/<UTC time>/ holding its files and a
manifest.json (what, when, which images, each file's size and sha256, row and key counts).
It is written into a hidden partial directory, verified (pg_restore --list on the dump,
redis-check-rdb on the RDB, SQLite's integrity_check on Grafana's and n8n's databases, MD5
of every object against the object store's own), and only then renamed into place: a backup
directory with a manifest is always complete. Directories are 0700, files 0600.

Postgres and Redis are read and written inside their running task containers through the
Docker API (exec, put_archive), or, when a task runs on another node than this engine's, in a
companion on this node that reaches it over the overlay network (swarm/companion.py).
Credentials are read from /run/secrets inside the container
by a shell there: they are never in a process's arguments, in an exec's environment or in
our output (DESIGN decision 7).

A restore validates the backup (manifest, checksums, pg_restore --list, redis-check-rdb in
the target's own containers) before it touches the target, then saves the target's current
data as a backup of its own, and only then replaces Postgres (pg_restore --clean in one
transaction) and Redis (stopped, its data directory moved aside, the RDB installed as the
base of a fresh append-only file, started again; on another node, redis_remote.py does the
same there through a one-off job).

The package, one module per part:
  manifest    names, the backup directory, manifest.json and its validation (no daemon)
  containers  commands inside a service's running container (exec, a temporary directory)
  env         backup.env: Postgres and Redis
  shared      backup.shared: the object store's buckets, Grafana's and n8n's data
  restore     restore.env
  redis_remote  restore.env's Redis step when Redis runs on another node
  shared_restore  restore.shared
  offsite     the off-site copy of each backup (BACKUP_S3_*), and bringing one back
  run         one run of backup.env or backup.shared: the backup, its record, retention
  retention   BACKUP_KEEP: which backups are kept, and pruning the others
  records     the record of each run and drill that Prometheus reads (a textfile collector)
  tables      per-table row counts and checksums, taken in the dump's own snapshot
  drill       backup.drill: a backup restored into throwaway containers and checked
  schedule    the systemd timer, and backup.all, the run it starts
This module is the entry: tasks, and whatever else uses backups, import from `infra.backup`.
"""

import importlib

# What each name is, by submodule. The package imports a submodule only when one of its
# names is first used: `invoke status` reads two records and needs no exec, dump or
# restore machinery (a PEP 562 module __getattr__; `from infra.backup import X` works alike).
_EXPORTS: dict[str, str] = {
    "SERVICE_LABEL": "containers",
    "DrillFailed": "drill",
    "DrillResult": "drill",
    "drill_env": "drill",
    "newest_backup": "drill",
    "backup_env": "env",
    "check_rdb": "env",
    "dump_postgres": "env",
    "list_dump": "env",
    "redis_key_count": "env",
    "snapshot_redis": "env",
    "table_counts": "env",
    "BACKUP_NAME": "manifest",
    "BackupError": "manifest",
    "BackupResult": "manifest",
    "FORMAT": "manifest",
    "GRAFANA_DB": "manifest",
    "MANIFEST": "manifest",
    "POSTGRES_DUMP": "manifest",
    "REDIS_RDB": "manifest",
    "Report": "manifest",
    "_finalise": "manifest",
    "_partial_dir": "manifest",
    "backup_name": "manifest",
    "check_dump_header": "manifest",
    "check_rdb_header": "manifest",
    "describe": "manifest",
    "file_entry": "manifest",
    "human_size": "manifest",
    "is_backup_name": "manifest",
    "refuse_prod_without_yes": "manifest",
    "sha256_file": "manifest",
    "stamp": "manifest",
    "validate": "manifest",
    "write_manifest": "manifest",
    "OffsiteCopy": "offsite",
    "offsite": "offsite",
    "upload": "offsite",
    "Record": "records",
    "last_drills": "records",
    "last_records": "records",
    "status_line": "records",
    "RestoreResult": "restore",
    "aof_base_files": "restore",
    "restore_env": "restore",
    "restore_redis": "restore",
    "scale": "restore",
    "Entry": "retention",
    "PruneResult": "retention",
    "RetentionPlan": "retention",
    "TARGETS": "retention",
    "plan_prune": "retention",
    "plan_retention": "retention",
    "prune": "retention",
    "RunResult": "run",
    "copy_offsite": "run",
    "run_backup": "run",
    "Outcome": "schedule",
    "run_all": "schedule",
    "DATA_PARTS": "shared",
    "backup_shared": "shared",
    "copy_data_directory": "shared",
    "export_buckets": "shared",
    "SharedRestoreResult": "shared_restore",
    "restore_shared": "shared_restore",
}


def __getattr__(name: str):
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{module_name}")
    value = module if name == module_name else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "BACKUP_NAME",
    "DATA_PARTS",
    "FORMAT",
    "GRAFANA_DB",
    "MANIFEST",
    "POSTGRES_DUMP",
    "REDIS_RDB",
    "SERVICE_LABEL",
    "TARGETS",
    "BackupError",
    "BackupResult",
    "DrillFailed",
    "DrillResult",
    "Outcome",
    "Entry",
    "OffsiteCopy",
    "PruneResult",
    "Record",
    "Report",
    "RestoreResult",
    "RetentionPlan",
    "RunResult",
    "SharedRestoreResult",
    "_finalise",
    "_partial_dir",
    "aof_base_files",
    "backup_env",
    "backup_name",
    "backup_shared",
    "check_dump_header",
    "check_rdb",
    "check_rdb_header",
    "copy_data_directory",
    "describe",
    "drill_env",
    "dump_postgres",
    "export_buckets",
    "file_entry",
    "human_size",
    "is_backup_name",
    "last_drills",
    "last_records",
    "offsite",
    "list_dump",
    "newest_backup",
    "plan_prune",
    "plan_retention",
    "prune",
    "redis_key_count",
    "refuse_prod_without_yes",
    "restore_env",
    "restore_redis",
    "run_all",
    "restore_shared",
    "run_backup",
    "copy_offsite",
    "scale",
    "sha256_file",
    "snapshot_redis",
    "stamp",
    "status_line",
    "table_counts",
    "upload",
    "validate",
    "write_manifest",
]
