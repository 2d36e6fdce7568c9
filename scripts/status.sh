#!/usr/bin/env bash
# status.sh [-v] [--json]
# Shows every stack's services; -v adds tasks, networks and DATA_ROOT disk use.
source "$(dirname "${BASH_SOURCE[0]}")/_invoke.sh"

args=()
for arg in "$@"; do
    case "${arg}" in
        -v|--verbose) args+=(--verbose) ;;
        --json) args+=(--json) ;;
        -h|--help) sed -n '2,3p' "$0" | sed 's/^# //'; exit 0 ;;
        *) echo "status.sh: unknown option '${arg}'. Valid: -v, --json." >&2; exit 1 ;;
    esac
done
run_invoke status "${args[@]}"
