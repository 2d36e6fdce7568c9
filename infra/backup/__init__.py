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

from infra.backup import offsite
from infra.backup.containers import SERVICE_LABEL, running_container
from infra.backup.drill import DrillFailed, DrillResult, drill_env, newest_backup
from infra.backup.env import (
    backup_env,
    check_rdb,
    dump_postgres,
    list_dump,
    redis_key_count,
    snapshot_redis,
    table_counts,
)
from infra.backup.manifest import (
    BACKUP_NAME,
    FORMAT,
    GRAFANA_DB,
    MANIFEST,
    POSTGRES_DUMP,
    REDIS_RDB,
    BackupError,
    BackupResult,
    Report,
    _finalise,
    _partial_dir,
    backup_name,
    check_dump_header,
    check_rdb_header,
    describe,
    file_entry,
    human_size,
    is_backup_name,
    refuse_prod_without_yes,
    sha256_file,
    stamp,
    validate,
    write_manifest,
)
from infra.backup.offsite import OffsiteCopy, upload
from infra.backup.records import Record, last_drills, last_records, status_line
from infra.backup.restore import (
    RestoreResult,
    aof_base_files,
    restore_env,
    restore_redis,
    scale,
)
from infra.backup.retention import (
    TARGETS,
    Entry,
    PruneResult,
    RetentionPlan,
    plan_prune,
    plan_retention,
    prune,
)
from infra.backup.run import RunResult, copy_offsite, run_backup
from infra.backup.schedule import Outcome, run_all
from infra.backup.shared import DATA_PARTS, backup_shared, copy_data_directory, export_buckets
from infra.backup.shared_restore import SharedRestoreResult, restore_shared

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
    "running_container",
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
