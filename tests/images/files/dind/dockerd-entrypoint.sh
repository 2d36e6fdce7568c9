#!/bin/sh
# Stand-in for docker:dind's dockerd-entrypoint.sh, test use only: the engine always listens on
# unix:///var/run/docker.sock and, without TLS, on tcp://0.0.0.0:2375.
#   no arguments, or a first argument starting with '-': dockerd with those options
#   dockerd [options]: the same
#   anything else: executed as a command
# The container needs every capability except SYS_RESOURCE, seccomp/apparmor/systempaths
# unconfined and /sys/fs/cgroup mounted read-write (--privileged fails on our CI machine).
set -e

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- dockerd "$@"
fi

if [ "$1" = dockerd ]; then
    shift
    # What upstream's "dind" hack does that matters here: securityfs for AppArmor probes and
    # a writable /tmp.
    if [ -d /sys/kernel/security ] && ! mountpoint -q /sys/kernel/security 2>/dev/null; then
        mount -t securityfs none /sys/kernel/security 2>/dev/null || true
    fi
    if ! mountpoint -q /tmp 2>/dev/null; then
        mount -t tmpfs none /tmp 2>/dev/null || true
    fi
    rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid
    set -- dockerd --host=unix:///var/run/docker.sock --host=tcp://0.0.0.0:2375 --tls=false "$@"
fi

exec "$@"
