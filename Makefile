# Token vending service: `make run` (embedded default) and `make test` (everything).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PYTHON
# Two stamps: `make run` installs what serving needs (requirements.txt + the package, seconds);
# `make test`, `make lint` and `make bench` add the dev toolchain (requirements-dev.txt).
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed-dev
# Options for `vending serve` (e.g. make run ARGS="--port 9080 --iam-port 9081").
ARGS ?=

.PHONY: run run-chat test test-long bench lint venv clean

$(RUN_STAMP): requirements.txt pyproject.toml scripts/venv.sh
	bash scripts/venv.sh run
	touch $(RUN_STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml scripts/venv.sh
	bash scripts/venv.sh dev
	touch $(RUN_STAMP) $(STAMP)

venv: $(STAMP)

## The service on the embedded default: SQLite store, local IAM stand-in, dev issuer.
run: $(RUN_STAMP)
	$(PY) -m vending serve $(ARGS)

## The same, with the chat-ops apps (Slack, Google Chat, notifier) on local fakes: docs/chatops.md.
run-chat: $(RUN_STAMP)
	$(PY) -m vending.local.chat serve $(ARGS)

## The whole suite: unit, functional, contract (SQLite + Firestore emulator),
## integration (emulators), security, faults, Terraform offline checks.
## A missing emulator FAILS the run; VENDING_SKIP_EMULATORS=1 deselects the
## emulator tests on purpose and the summary lists what was not run.
## See tests/README.md.
test: $(STAMP)
	bash scripts/checkov.sh
	$(PY) -m pytest -q

## Long variants (fuzzing 300 cases per operation with a random seed, printed
## for replay: VENDING_FUZZ_SEED=<seed> make test-long; 20 x 50 concurrency
## repetitions...).
test-long: $(STAMP)
	$(PY) -m pytest -q -m long
	bash scripts/mutation.sh

bench: $(STAMP)
	$(PY) -m bench

## ruff (the rule set in pyproject.toml, over the whole tree), ruff's formatter in check mode, and
## mypy (strict at the module seams: the files and overrides in pyproject.toml).
## .ci/run runs it before the tests; `$(VENV)/bin/ruff format .` fixes what the format check finds.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .venv-checkov .venv-tools .vending-local .pytest_cache
