#!/usr/bin/env bash
# Deploy the example app into one environment, from its workflow (.github/workflows/deploy.yml):
#   deploy.sh stg|prod IMAGE
# The platform's .env and secrets.yml come in PLATFORM_ENV and PLATFORM_SECRETS (the
# repository's secrets); they are written 0600 to the runner's temporary directory and
# removed when the deploy ends, whatever its outcome.
set -euo pipefail
target=$1 image=$2
here=$(cd "$(dirname "$0")" && pwd)

umask 077
env_file=$(mktemp "${RUNNER_TEMP:-/tmp}/platform-env.XXXXXX")
secrets_file=$(mktemp "${RUNNER_TEMP:-/tmp}/platform-secrets.XXXXXX")
trap 'rm -f "$env_file" "$secrets_file"' EXIT
printf '%s\n' "${PLATFORM_ENV:?the platform .env, as a repository secret}" > "$env_file"
printf '%s\n' "${PLATFORM_SECRETS:?the platform secrets.yml, as a repository secret}" > "$secrets_file"

# The image was built on this engine, not pushed: nothing to resolve on a registry.
ENV_FILE=$env_file SECRETS_FILE=$secrets_file RESOLVE_IMAGE=never \
    "${INVOKE:-invoke}" --search-root "${PLATFORM_DIR:?the platform checkout}" app.deploy \
    --name="$target" --file="$here/compose.yml" --image="$image"
