#!/usr/bin/env bash
# Creates .venv and installs one pinned set into it, fast (what the Makefile's stamps call).
#
#   scripts/venv.sh run   requirements.txt + the package: what `make run` serves with (seconds)
#   scripts/venv.sh dev   requirements-dev.txt + the package: tests, lint, benchmarks
#
# The installer is uv (pinned below), itself installed from PyPI by pip into .venv; it resolves the
# same pinned requirements from the same registry, with every dependency, but downloads and unpacks
# in parallel. The venv has no pip of its own (`.venv/bin/uv pip install X` adds a package). uv
# reads its own settings (UV_INDEX_URL, uv.toml), not pip.conf.
# Without a usable pip for $PYTHON, the venv gets pip from ensurepip and installs uv with it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
UV_VERSION="0.13.9"
PY="$VENV/bin/python"
UV="$VENV/bin/uv"

case "${1:-}" in
  run) set -- -r requirements.txt ;;
  dev) set -- -r requirements-dev.txt ;;
  *) echo "usage: $0 run|dev" >&2; exit 2 ;;
esac

if [ ! -x "$PY" ]; then
  "$PYTHON" -m venv --without-pip "$VENV"
fi
if [ "$("$UV" --version 2>/dev/null)" != "uv $UV_VERSION" ]; then
  # pip >= 22.3 installs into another interpreter's environment (--python) without a pip of its own.
  # uv has no dependencies: --no-deps skips pip's resolver and its check of the environment.
  if ! "$PYTHON" -m pip --python "$PY" install --quiet --no-compile --no-deps --disable-pip-version-check \
      --progress-bar off "uv==$UV_VERSION" 2>/dev/null; then
    "$PY" -m ensurepip --default-pip >/dev/null
    "$PY" -m pip install --quiet --no-compile --no-deps --disable-pip-version-check "uv==$UV_VERSION"
  fi
fi
# One resolution of the pinned set and the package (editable, with its console script `vending`).
# No bytecode compilation here: Python compiles what it imports, on first import.
exec "$UV" pip install --quiet --python "$PY" "$@" -e .
