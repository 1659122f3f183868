"""pytest plugin for mutation runs (scripts/mutation.py): judge each mutant by its module's own tests.

mutmut 3 maps every mutated function to the tests that call it and runs those
against each of its mutants. Every request through the HTTP harness verifies a
caller token, so without a scope each ``vending.identity`` mutant would also run
every functional and security test of the selection (hundreds, for a survivor).
When ``MUTANT_UNDER_TEST`` names a mutant of a module listed in ``SCOPES``, this
plugin deselects the tests outside that module's files; the stats run, the clean
run and the forced-fail run (no mutant named) keep the whole selection.

Loaded with ``-p scripts.mutation_scope`` from ``[tool.mutmut] pytest_add_cli_args``.
"""

from __future__ import annotations

import os

import pytest

# module -> the test files that judge its mutants (others: every test mutmut associates with the function)
SCOPES: dict[str, tuple[str, ...]] = {
    "vending.identity": (
        "tests/unit/test_identity.py",
        "tests/unit/test_token_attacks.py",
        "tests/unit/test_mutation_identity.py",
    ),
}


def scope_of(mutant: str) -> tuple[str, ...] | None:
    for module, files in SCOPES.items():
        if mutant.startswith(module + ".x"):
            return files
    return None


def _file_of(arg: str) -> str | None:
    """The test file a command-line node id names (``tests/x.py::test[a]``), else None."""
    path = arg.split("::", 1)[0]
    return path if path.startswith("tests/") and path.endswith(".py") else None


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """Drop out-of-scope node ids before collection (collecting hundreds of HTTP tests costs seconds)."""
    files = scope_of(os.environ.get("MUTANT_UNDER_TEST", ""))
    if files is None:
        return
    kept = [a for a in args if _file_of(a) is None or _file_of(a) in files]
    if any(_file_of(a) for a in kept):  # never leave no test at all: pytest would run its testpaths
        args[:] = kept


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    files = scope_of(os.environ.get("MUTANT_UNDER_TEST", ""))
    if files is None:
        return
    keep = [item for item in items if item.nodeid.split("::", 1)[0] in files]
    dropped = [item for item in items if item.nodeid.split("::", 1)[0] not in files]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
