#!/bin/sh
# Stand-in for the official traefik image's /entrypoint.sh (traefik-library-image):
#   - a first argument starting with '-' is an option for traefik;
#   - a first argument that traefik knows as a subcommand (version, healthcheck, ...) runs
#     through traefik;
#   - anything else is executed as a command.
set -e

case "${1:-}" in
    -*) set -- traefik "$@" ;;
esac

if traefik "$1" --help >/dev/null 2>&1; then
    set -- traefik "$@"
else
    echo "= '$1' is not a Traefik command: assuming shell execution." 1>&2
fi

exec "$@"
