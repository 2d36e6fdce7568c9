# Sourced by start.sh, stop.sh and status.sh: find the repository, and run invoke from its
# root in its virtualenv, created on first use. The scripts check their own arguments first:
# a wrong target is refused before anything is installed.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REPO_ROOT}/.venv"

ensure_venv() {
    if [[ ! -x "${VENV}/bin/invoke" ]]; then
        echo "setting up ${VENV} (first run only)" >&2
        python3 -m venv "${VENV}"
        "${VENV}/bin/pip" install --quiet --upgrade pip
        "${VENV}/bin/pip" install --quiet -e "${REPO_ROOT}"
    fi
}

run_invoke() {
    ensure_venv
    cd "${REPO_ROOT}"
    exec "${VENV}/bin/invoke" "$@"
}
