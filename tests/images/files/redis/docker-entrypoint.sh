#!/bin/sh
# Stand-in for the official redis image's entrypoint (redis/docker-library-redis 7.4):
#   - a first argument starting with '-' or ending in '.conf' gets redis-server put in front;
#   - redis-server started as root: hand /data to redis, then re-exec as redis (uid 999);
#   - umask 0077 when it is the default 0022.
set -e

case "$1" in
    -*|*.conf) set -- redis-server "$@" ;;
esac

if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis '{}' +
    exec gosu redis "$0" "$@"
fi

if [ "$(umask)" = 0022 ]; then
    umask 0077
fi

exec "$@"
