"""What a backup's Postgres holds, table by table: row counts and content checksums, taken in
the very snapshot pg_dump dumps, so that a restore of the dump must reproduce them exactly.

A table's checksum is the sum, over its rows, of the first 64 bits of md5(row as text), with
its row count. A sum does not depend on row order (a restore loads rows in any order) and
needs no memory per row; one changed, added or removed row changes it. The text of a row
depends on session settings (time zone, date and float formats), so both sides set them the
same way before reading (STATS_SETTINGS).

At backup time, pg_dump and the statistics share one snapshot: psql opens a repeatable-read
transaction, exports its snapshot, runs pg_dump --snapshot from inside that transaction (\\!),
then counts and sums the tables in it. Writes to the live database during the dump change
neither. Without that, a busy database would make every drill fail for rows written between
the dump and the count.
"""

from __future__ import annotations

from dataclasses import dataclass

# Every base table outside the system schemas, as restore.env's row count sees them.
_STATS_QUERY = """
SELECT format('%I.%I', table_schema, table_name),
       (xpath('/row/n/text()', stats))[1]::text,
       (xpath('/row/s/text()', stats))[1]::text
FROM information_schema.tables,
     LATERAL query_to_xml(format(
         'SELECT count(*) AS n, coalesce(sum((''x'' || substr(md5(t::text), 1, 16))'
         '::bit(64)::bigint::numeric), 0) AS s FROM %I.%I t',
         table_schema, table_name), false, true, '') AS stats
WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1;
"""
# Row text is rendered the same whatever the server's or the image's defaults.
STATS_SETTINGS = """
SET TimeZone = 'UTC';
SET DateStyle = 'ISO, YMD';
SET IntervalStyle = 'postgres';
SET extra_float_digits = 1;
SET bytea_output = 'hex';
SET lc_monetary = 'C';
SET xmloption = 'content';
"""
STATS_SQL = STATS_SETTINGS + _STATS_QUERY

# psql, fed a script on stdin ($1), quiet (no command tags), tab-separated, stopping at the
# first error. Connection settings come from the environment (PG* variables).
_PSQL_SCRIPT = (
    "printf '%s\\n' \"$1\" | psql -X -q -A -t -F \"$(printf '\\t')\" -v ON_ERROR_STOP=1 -f -"
)

# The dump and its statistics in one snapshot. fd 3 is the exec's stdout: pg_dump writes the
# archive there; psql's own output (the statistics) goes to a file, printed afterwards on
# stderr, each line marked, since stdout is the archive.
_DUMP_SCRIPT = (
    "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\n"
    "SELECT pg_export_snapshot() AS nextcandle_snapshot \\gset\n"
    "\\setenv NEXTCANDLE_SNAPSHOT :nextcandle_snapshot\n"
    # One line: psql's \\! takes the rest of it as the shell command.
    '\\! pg_dump --format=custom --snapshot="$NEXTCANDLE_SNAPSHOT" >&3 '
    '2>"$NEXTCANDLE_DIR/dump.err"; echo $? >"$NEXTCANDLE_DIR/dump.status"\n'
    + STATS_SQL
    + "COMMIT;\n"
)
MARK = "nextcandle-table\t"
DUMP_AND_STATS = (
    'NEXTCANDLE_DIR="$(mktemp -d /tmp/nextcandle-backup.XXXXXX)" && export NEXTCANDLE_DIR '
    "&& trap 'rm -rf \"$NEXTCANDLE_DIR\"' EXIT "
    f'&& {{ {_PSQL_SCRIPT} 3>&1 >"$NEXTCANDLE_DIR/stats"; }} '
    '&& if [ "$(cat "$NEXTCANDLE_DIR/dump.status" 2>/dev/null)" != 0 ]; then '
    'cat "$NEXTCANDLE_DIR/dump.err" >&2; echo "pg_dump failed" >&2; exit 1; fi '
    f"&& while IFS= read -r line; do printf '{MARK}%s\\n' \"$line\" >&2; done "
    '<"$NEXTCANDLE_DIR/stats"'
)
STATS_ONLY = _PSQL_SCRIPT


@dataclass(frozen=True)
class TableStats:
    rows: dict[str, int]
    checksums: dict[str, str]


def dump_script() -> str:
    """The psql script DUMP_AND_STATS runs (its $1)."""
    return _DUMP_SCRIPT


def parse_stats(text: str, marked: bool = False) -> TableStats:
    """Lines of `schema.table<TAB>rows<TAB>checksum` (each after MARK when `marked`)."""
    rows: dict[str, int] = {}
    checksums: dict[str, str] = {}
    for line in text.splitlines():
        if marked:
            if not line.startswith(MARK):
                continue
            line = line[len(MARK) :]
        parts = line.split("\t")
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        name, count, checksum = parts
        rows[name] = int(count)
        checksums[name] = checksum
    return TableStats(rows, checksums)


def differences(expected_rows: dict, expected_checksums: dict, found: TableStats) -> list[str]:
    """What a restored database does differently from the backup's manifest, one phrase per
    table, in table order; empty when everything agrees."""
    problems = []
    for name in sorted(set(expected_rows) | set(found.rows)):
        if name not in found.rows:
            problems.append(
                f"table {name} is missing (the backup counted {expected_rows[name]} rows)"
            )
        elif name not in expected_rows:
            problems.append(f"table {name} is not in the backup's manifest")
        elif found.rows[name] != expected_rows[name]:
            problems.append(
                f"table {name} holds {found.rows[name]} rows, the backup counted "
                f"{expected_rows[name]}"
            )
        elif name in expected_checksums and found.checksums.get(name) != expected_checksums[name]:
            problems.append(
                f"table {name} holds {found.rows[name]} rows as counted, but their content "
                "differs from the backup's checksum"
            )
    return problems
