#!/bin/sh
# Stand-in for chrislusf/seaweedfs's /entrypoint.sh (seaweedfs docker/entrypoint.sh): each
# role gets the image's defaults in front of the caller's arguments, logging to stderr.
#   master  -mdir=/data -volumePreallocate -volumeSizeLimitMB=1024
#   volume  -dir=/data -max=0            (-max=0 dropped when the caller passes -max)
#   server  -dir=/data -volume.max=0 -master.volumePreallocate -master.volumeSizeLimitMB=1024
#           (-volume.max=0 dropped when the caller passes -volume.max)
#   filer   nothing extra
#   s3      -domainName=$S3_DOMAIN_NAME -key.file=$S3_KEY_FILE -cert.file=$S3_CERT_FILE
#   shell   the arguments are piped in as shell commands, SHELL_* variables select the cluster
#   other   weed with the arguments as given
# The image runs as seaweed (uid 1000). Started as root instead (`user: root`), it first gives
# /data to seaweed when /data belongs to someone else, then drops to seaweed.
# Unlike upstream, arguments are passed quoted (upstream splits them on spaces).
set -e
weed=/usr/bin/weed

if [ "$(id -u)" = 0 ]; then
    owner=$(stat -c '%u:%g' /data 2>/dev/null || true)
    if [ "$owner" != "$(id -u seaweed):$(id -g seaweed)" ]; then
        echo "Fixing /data ownership for seaweed user (uid=$(id -u seaweed), gid=$(id -g seaweed))"
        chown -R seaweed:seaweed /data || echo "Warning: cannot change the owner of /data; seaweed may fail to write it."
    fi
    exec gosu seaweed "$0" "$@"
fi

# has_flag NAME ARGS...: is -NAME or -NAME=... among ARGS?
has_flag() {
    flag=$1
    shift
    for arg; do
        case "$arg" in
            "$flag"|"$flag"=*) return 0 ;;
        esac
    done
    return 1
}

role=${1:-}
[ $# -gt 0 ] && shift

case "$role" in
    master)
        exec "$weed" -logtostderr=true master -mdir=/data -volumePreallocate -volumeSizeLimitMB=1024 "$@" ;;
    volume)
        if has_flag -max "$@"; then
            exec "$weed" -logtostderr=true volume -dir=/data "$@"
        fi
        exec "$weed" -logtostderr=true volume -dir=/data -max=0 "$@" ;;
    server)
        if has_flag -volume.max "$@"; then
            exec "$weed" -logtostderr=true server -dir=/data -master.volumePreallocate -master.volumeSizeLimitMB=1024 "$@"
        fi
        exec "$weed" -logtostderr=true server -dir=/data -volume.max=0 -master.volumePreallocate -master.volumeSizeLimitMB=1024 "$@" ;;
    filer)
        exec "$weed" -logtostderr=true filer "$@" ;;
    s3)
        exec "$weed" -logtostderr=true s3 "-domainName=${S3_DOMAIN_NAME:-}" "-key.file=${S3_KEY_FILE:-}" "-cert.file=${S3_CERT_FILE:-}" "$@" ;;
    shell)
        echo "$@" | exec "$weed" -logtostderr=true shell "-cluster=${SHELL_CLUSTER:-}" "-filer=${SHELL_FILER:-}" \
            "-filerGroup=${SHELL_FILER_GROUP:-}" "-master=${SHELL_MASTER:-}" "-options=${SHELL_OPTIONS:-}" ;;
    '')
        exec "$weed" ;;
    *)
        exec "$weed" "$role" "$@" ;;
esac
