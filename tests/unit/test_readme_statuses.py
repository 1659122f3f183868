"""The README's table of refusals says the status each reason really gets."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from vending import errors

REPO = Path(__file__).resolve().parents[2]


def _readme_rows() -> list[tuple[set[int], list[str]]]:
    text = (REPO / "README.md").read_text()
    table = text.split("Which status a refusal gets:", 1)[1].split("\n\n", 2)[1]
    rows = []
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        statuses = {int(code) for code in re.findall(r"\b(\d{3})\b", cells[0])}
        if "5xx" in cells[0]:
            statuses |= set(range(500, 600))
        if statuses:
            rows.append((statuses, re.findall(r"`([a-z][a-z0-9-]+)`", cells[2])))
    return rows


def _raised_reasons() -> dict[str, set[int]]:
    """reason -> the HTTP statuses of the error classes raised with it (``XError(..., reason="r")``)."""
    found: dict[str, set[int]] = {}
    for path in (REPO / "vending").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            cls = getattr(errors, name, None)
            if not (isinstance(cls, type) and issubclass(cls, errors.VendingError)):
                continue
            for kw in node.keywords:
                if kw.arg == "reason" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                    found.setdefault(kw.value.value, set()).add(cls.http_status)
    for cls in vars(errors).values():  # classes whose default reason is their own
        if isinstance(cls, type) and issubclass(cls, errors.VendingError):
            found.setdefault(cls.reason, set()).add(cls.http_status)
    found.setdefault(errors.AuthenticationError("detail").reason, set()).add(401)  # its __init__'s default
    return found


def test_each_reason_in_the_readme_table_has_the_status_it_is_listed_under() -> None:
    rows = _readme_rows()
    assert len(rows) >= 8
    raised = _raised_reasons()
    source = "\n".join(p.read_text() for p in (REPO / "vending").rglob("*.py"))
    listed: dict[str, set[int]] = {}  # a reason may be listed under two statuses (method-not-allowed)
    for statuses, reasons in rows:
        for reason in reasons:
            listed.setdefault(reason, set()).update(statuses)
    for statuses, reasons in rows:
        for reason in reasons:
            if reason in raised:
                assert raised[reason] <= listed[reason], (reason, listed[reason], raised[reason])
            elif reason.startswith("invalid-"):  # inputs: reason=f"invalid-{field}", always a 400
                assert statuses == {400} and 'reason=f"invalid-{' in source, reason
            else:  # set through a mapping or a class attribute: it must at least exist
                assert f'"{reason}"' in source, reason


def test_lifetime_above_the_maximum_is_400_as_the_readme_says() -> None:
    assert _raised_reasons()["lifetime-too-long"] == {400}
    assert any(statuses == {400} and "lifetime-too-long" in reasons for statuses, reasons in _readme_rows())
