#!/usr/bin/env bash
# start.sh [dev|stg|prod|core|shared|runner|all] [invoke options, e.g. --no-tunnel --dry-run]
# The original command, now a thin wrapper around `invoke deploy.*`.
source "$(dirname "${BASH_SOURCE[0]}")/_invoke.sh"

target="${1:-dev}"
shift || true
case "${target}" in
    dev|stg|prod) run_invoke deploy.env --name="${target}" "$@" ;;
    core|shared|runner|all) run_invoke "deploy.${target}" "$@" ;;
    -h|--help) sed -n '2,3p' "$0" | sed 's/^# //'; exit 0 ;;
    *) echo "start.sh: unknown target '${target}'. Valid: dev, stg, prod, core, shared, runner, all." >&2; exit 1 ;;
esac
