# The runner service's entrypoint (stacks/runner.yml), run by bash before the image's own.
#
# The image (myoung34/github-runner) reads its credential only from its environment, and a
# service's environment is readable by anyone who can inspect the service. So the
# credential comes as a Docker secret file, and this script exports it just before
# exec'ing the image's entrypoint, which un-exports it before the runner starts any job.
# Bash builtins only: the value is never on a command line. Nothing is printed.
set -euo pipefail

secrets_dir=/run/secrets
image_entrypoint=/entrypoint.sh

# export NAME from the secret file FILE, if the service mounts it
from_secret() {
    local file="${secrets_dir}/$2"
    if [[ -f "${file}" ]]; then
        local value
        value="$(<"${file}")"
        export "$1=${value}"
    fi
}

from_secret ACCESS_TOKEN runner_access_token
from_secret APP_PRIVATE_KEY runner_app_private_key
from_secret RUNNER_TOKEN runner_token

exec "${image_entrypoint}" "$@"
