# Sourced by the other scripts: finds Python >= 3.12, creates .venv on first use and keeps it
# installed from pyproject.toml. Nothing here is specific to one machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SALESFLOW_VENV:-$ROOT/.venv}"
# Optional dependency groups of pyproject.toml to install: test (default); CI adds browser and dev.
EXTRAS="${SALESFLOW_EXTRAS:-test}"

is_recent_python() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

find_python() {
    local candidate
    for candidate in python3.14 python3.13 python3.12 python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 && is_recent_python "$candidate"; then
            command -v "$candidate"; return 0
        fi
    done
    # pyenv shims exist for versions that are installed but not selected; ask pyenv where they live.
    local roots=()
    [ -n "${PYENV_ROOT:-}" ] && roots+=("$PYENV_ROOT")
    command -v pyenv >/dev/null 2>&1 && roots+=("$(pyenv root)")
    for root in "${roots[@]}"; do
        for candidate in $(ls -d "$root"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do
            if is_recent_python "$candidate"; then echo "$candidate"; return 0; fi
        done
    done
    return 1
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ] || ! is_recent_python "$VENV/bin/python"; then
        local python
        python="$(find_python)" || { echo "error: Python >= 3.12 is required and none was found on PATH" >&2; exit 2; }
        echo "Creating $VENV with $python" >&2
        rm -rf "$VENV"
        "$python" -m venv "$VENV"
    fi
    local stamp="$VENV/.installed-$( (cat "$ROOT/pyproject.toml"; echo "$EXTRAS") | sha256sum | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        echo "Installing dependencies into $VENV" >&2
        "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
        "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$EXTRAS]" >&2
        rm -f "$VENV"/.installed-*
        touch "$stamp"
    fi
}

ensure_venv
PY="$VENV/bin/python"
cd "$ROOT"
