#!/usr/bin/env bash
# Mutation testing of vending/identity.py, policy.py, grant.py and ledger.py (issue 19, item 9).
# Run by `make test-long`; about half an hour on 2 cores. Prints the score per module and overall
# and every surviving mutant, writes tests/MUTATION.md, fails below 85% overall.
# Options (passed on to scripts/mutation.py): --keep (reuse mutants/), --report-only,
# --max-children N, --threshold PERCENT.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
exec "$PY" scripts/mutation.py "$@"
