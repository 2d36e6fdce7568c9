# Sourced by start.sh, stop.sh and status.sh: find the repository, make sure its virtualenv
# exists (created on first use), and run invoke from the repository root.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REPO_ROOT}/.venv"

if [[ ! -x "${VENV}/bin/invoke" ]]; then
    echo "setting up ${VENV} (first run only)" >&2
    python3 -m venv "${VENV}"
    "${VENV}/bin/pip" install --quiet --upgrade pip
    "${VENV}/bin/pip" install --quiet -e "${REPO_ROOT}"
fi

run_invoke() {
    cd "${REPO_ROOT}"
    exec "${VENV}/bin/invoke" "$@"
}
