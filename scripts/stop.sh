#!/usr/bin/env bash
# stop.sh [dev|stg|prod|core|shared|runner|all] [--cleanup] [--dry-run]
# Removes stacks; data directories are always kept. Default target: all.
source "$(dirname "${BASH_SOURCE[0]}")/_invoke.sh"

target="all"
if [[ $# -gt 0 && "$1" != --* ]]; then
    target="$1"
    shift
fi
case "${target}" in
    dev|stg|prod) run_invoke stop.env --name="${target}" "$@" ;;
    core|shared|runner|all) run_invoke "stop.${target}" "$@" ;;
    -h|--help) sed -n '2,3p' "$0" | sed 's/^# //'; exit 0 ;;
    *) echo "stop.sh: unknown target '${target}'. Valid: dev, stg, prod, core, shared, runner, all." >&2; exit 1 ;;
esac
