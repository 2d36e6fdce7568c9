#!/bin/sh
# Stand-in for tecnativa/docker-socket-proxy's /usr/local/bin/docker-entrypoint.sh: render
# the bind address into /tmp/haproxy.cfg (IPv4 only with DISABLE_IPV6=1|true|yes), then run
# haproxy in master-worker mode in the foreground, as the haproxy image's entrypoint does.
set -e

case "$(echo "${DISABLE_IPV6:-0}" | tr '[:upper:]' '[:lower:]')" in
    1 | true | yes) BIND_CONFIG=":2375" ;;
    *) BIND_CONFIG="[::]:2375 v4v6" ;;
esac
sed "s|\${BIND_CONFIG}|$BIND_CONFIG|g" /usr/local/etc/haproxy/haproxy.cfg.template > /tmp/haproxy.cfg

# first arg is `-f` or `--some-option`
if [ "${1#-}" != "$1" ]; then
    set -- haproxy "$@"
fi
if [ "$1" = haproxy ]; then
    shift
    set -- haproxy -W -db "$@"
fi
exec "$@"
