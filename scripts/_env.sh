# Shared by scripts/quickstart and scripts/test: a Python venv outside the clone.
# Sourced, not executed.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MEORING_CACHE="${MEORING_CACHE:-$HOME/.cache/meoring}"
VENV="${MEORING_VENV:-$MEORING_CACHE/venv}"

need() { command -v "$1" >/dev/null 2>&1 || { echo "meoring: '$1' is required ($2)" >&2; exit 1; }; }

python_ok() {
  "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null
}

setup_venv() {
  local extras="$1"
  need python3 "Python 3.11 or newer"
  python_ok python3 || { echo "meoring: Python 3.11 or newer is required" >&2; exit 1; }
  if [ ! -x "$VENV/bin/python" ] || ! python_ok "$VENV/bin/python"; then
    echo "==> creating virtual environment $VENV"
    python3 -m venv "$VENV"
  fi
  # Re-install only when the dependency list changed (pip is slow even when all is there).
  local stamp="$VENV/.meoring-$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)-$extras"
  # …or when the venv's editable install points at another clone (a reused venv would run its code).
  local here
  here="$(cd / && "$VENV/bin/python" -c 'import hub, os; print(os.path.dirname(os.path.dirname(hub.__file__)))' \
    2>/dev/null || true)"
  if [ ! -f "$stamp" ] || [ -z "$here" ] || [ "$(cd "$here" && pwd -P)" != "$(cd "$REPO" && pwd -P)" ]; then
    echo "==> installing Meoring Hub and its dependencies into $VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e "$REPO[$extras]"
    touch "$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
}
