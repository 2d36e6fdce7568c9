#!/bin/sh
# Stand-in for n8nio/n8n's /docker-entrypoint.sh: trust the certificates mounted at
# /opt/custom-certificates (if any), then run n8n with the given arguments.
if [ -d /opt/custom-certificates ]; then
    echo "Trusting custom certificates from /opt/custom-certificates."
    export NODE_OPTIONS="--use-openssl-ca ${NODE_OPTIONS:-}"
    export SSL_CERT_DIR=/opt/custom-certificates
    c_rehash /opt/custom-certificates 2>/dev/null || true
fi

if [ "$#" -gt 0 ]; then
    exec n8n "$@"
fi
exec n8n
