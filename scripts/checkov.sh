#!/usr/bin/env bash
# Static security checks of the Terraform with checkov, offline.
#
# Usage: scripts/checkov.sh [TERRAFORM_DIR] [SKIP_FILE]
#   TERRAFORM_DIR  default: terraform/
#   SKIP_FILE      default: TERRAFORM_DIR/checkov-skips.yaml
#
# checkov lives in its own virtualenv (.venv-checkov): its pins conflict with
# the application's. The script creates it on first use from PyPI.
#
# Fails (exit 1) when
#   - a check failed that the skip file does not list (with a reason),
#   - checkov reports a parsing error (checkov itself exits 0 on a syntax error),
#   - no resource was scanned at all (a broken path or a parser that gave up),
#   - checkov crashed or printed something that is not its JSON report.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TF_DIR="$(cd "${1:-$ROOT/terraform}" && pwd)"
SKIP_FILE="${2:-$TF_DIR/checkov-skips.yaml}"
VENV="${CHECKOV_VENV:-$ROOT/.venv-checkov}"
CHECKOV_VERSION="3.3.30"
PYTHON="${PYTHON:-python3}"

install_checkov() {
  local marker="$VENV/.checkov-$CHECKOV_VERSION"
  [ -f "$marker" ] && return 0
  echo "checkov: installing checkov==$CHECKOV_VERSION into $VENV" >&2
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  local log; log="$(mktemp)"
  if ! "$VENV/bin/pip" install --disable-pip-version-check "checkov==$CHECKOV_VERSION" >"$log" 2>&1; then
    grep -v '^WARNING: Location' "$log" | tail -n 30 >&2; rm -f "$log"; exit 1
  fi
  rm -f "$log"
  touch "$marker"
}

# One installer at a time (pytest may call this script while CI does).
exec 9>"${TMPDIR:-/tmp}/venv-checkov.$(printf %s "$VENV" | cksum | cut -d' ' -f1).lock"
flock 9
install_checkov
flock -u 9

[ -f "$SKIP_FILE" ] || { echo "checkov: skip file $SKIP_FILE not found" >&2; exit 1; }

OUT="$(mktemp)"
ERR="$(mktemp)"
trap 'rm -f "$OUT" "$ERR"' EXIT

started=$SECONDS
# --soft-fail: checkov's own exit code is not trusted (0 on syntax errors);
# the Python step below decides. --skip-download: never call out to the
# vendor's API (offline machines, and no data leaves this one).
if ! "$VENV/bin/checkov" -d "$TF_DIR" --framework terraform --output json \
    --soft-fail --skip-download --compact >"$OUT" 2>"$ERR"; then
  echo "checkov: checkov itself failed:" >&2
  tail -n 30 "$ERR" >&2
  exit 1
fi

"$VENV/bin/python" - "$OUT" "$SKIP_FILE" "$ERR" "$((SECONDS - started))" <<'PY'
import json
import sys

import yaml

out_path, skip_path, err_path, elapsed = sys.argv[1:5]

with open(skip_path, encoding="utf-8") as fh:
    skip_doc = yaml.safe_load(fh) or {}
skips = skip_doc.get("skips") or []
problems = []
allowed = []  # (check_id, resources or None)
for i, entry in enumerate(skips):
    reason = str((entry or {}).get("reason") or "").strip()
    check_id = str((entry or {}).get("id") or "").strip()
    if not check_id or len(reason) < 20:
        problems.append(f"skip file entry {i}: needs an 'id' and a written 'reason' (20+ characters)")
        continue
    resources = entry.get("resources")
    allowed.append((check_id, tuple(resources) if resources else None))

try:
    with open(out_path, encoding="utf-8") as fh:
        raw = fh.read()
    report = json.loads(raw) if raw.strip() else []
except json.JSONDecodeError:
    with open(err_path, encoding="utf-8") as fh:
        sys.stderr.write(fh.read()[-3000:])
    print("checkov: FAIL: output is not checkov's JSON report")
    sys.exit(1)

reports = report if isinstance(report, list) else [report]
reports = [r for r in reports if isinstance(r, dict) and "summary" in r]
passed = failed = parsing = resources = 0
parse_files = []
failures = []
for r in reports:
    s = r["summary"]
    passed += int(s.get("passed", 0))
    failed += int(s.get("failed", 0))
    parsing += int(s.get("parsing_errors", 0))
    resources += int(s.get("resource_count", 0))
    parse_files += list((r.get("results") or {}).get("parsing_errors") or [])
    failures += list((r.get("results") or {}).get("failed_checks") or [])


def is_allowed(check):
    for check_id, names in allowed:
        if check_id != check.get("check_id"):
            continue
        if names is None:
            return True
        res = check.get("resource", "")
        if any(res == n or res.endswith("." + n) for n in names):
            return True
    return False


used = set()
unlisted = []
for check in failures:
    if is_allowed(check):
        used.add(check.get("check_id"))
    else:
        unlisted.append(check)

print(f"checkov: {passed} passed, {failed - len(unlisted)} skipped (failed, listed with a reason in "
      f"{skip_path.rsplit('/', 1)[-1]}), {len(unlisted)} failed, {parsing} parsing errors; "
      f"{resources} resources scanned in {elapsed}s")
for check in unlisted:
    print(f"  FAILED {check.get('check_id')} {check.get('resource')} "
          f"({check.get('file_path')}:{(check.get('file_line_range') or ['?'])[0]}): {check.get('check_name')}")
for path in parse_files:
    print(f"  PARSING ERROR {path}")
for check_id, _ in allowed:
    if check_id not in used:
        print(f"  note: skip entry {check_id} matched no failed check (stale?)")
for p in problems:
    print(f"  {p}")

if unlisted or parsing or problems:
    print("checkov: FAIL")
    sys.exit(1)
if resources == 0 or passed + failed == 0:
    print("checkov: FAIL: no resource was scanned")
    sys.exit(1)
print("checkov: OK")
PY
