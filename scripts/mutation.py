"""Mutation testing of the modules that carry the security promise (issue 19, item 9).

    .venv/bin/python scripts/mutation.py [--keep] [--max-children N] [--threshold 85] [--report-only]

Runs mutmut 3 (configured in ``pyproject.toml [tool.mutmut]``) over
``vending/identity.py``, ``vending/policy.py``, ``vending/grant.py`` and
``vending/ledger.py`` with a fast, SQLite-only test selection, then:

- prints the score per module and overall, and every mutant that was not
  killed (module, line, diff, and the explanation recorded for it);
- writes ``tests/MUTATION.md`` (the score table and every survivor with its
  one-line explanation);
- exits 1 when the overall score is below ``--threshold`` percent (85), or
  when mutmut itself fails.

The score is mutmut's: (killed + timeout) / (all mutants - skipped). A
mutant no selected test reaches ("no tests") or a "suspicious" one counts as
not killed.

Explanations live in ``scripts/mutation_notes.toml``: each note names a
module (and optionally a function) and a piece of text the mutated line
contains (and optionally the original line), so it survives renumbering.
A survivor without a note is listed as UNEXPLAINED.

By default the run starts from scratch (``mutants/`` is deleted: mutmut keeps
the verdict of a survivor even when a new test would kill it). ``--keep``
reuses mutmut's cache for quick iterations; ``--report-only`` rewrites the
report from the last run without running mutmut.
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("vending/identity.py", "vending/policy.py", "vending/grant.py", "vending/ledger.py")
NOTES = ROOT / "scripts" / "mutation_notes.toml"
REPORT = ROOT / "tests" / "MUTATION.md"
README = ROOT / "tests" / "README.md"  # its "## Mutation testing" section is rewritten after each run
KILLED = ("killed", "timeout", "caught by type check")


@dataclass
class Mutant:
    name: str
    path: str
    status: str
    function: str = ""
    line: int = 0
    minus: list[str] = field(default_factory=list)
    plus: list[str] = field(default_factory=list)
    diff: str = ""
    why: str | None = None

    @property
    def module(self) -> str:
        return self.path[:-3].replace("/", ".")


@dataclass
class Score:
    total: int = 0
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def tested(self) -> int:
        """Mutants with a verdict: not skipped, and not left unchecked by a run stopped early."""
        return self.total - self.counts["skipped"] - self.counts["not checked"]

    @property
    def killed(self) -> int:
        return sum(self.counts[s] for s in KILLED)

    @property
    def percent(self) -> float:
        return 100.0 * self.killed / self.tested if self.tested else 100.0


def run_mutmut(max_children: int, keep: bool) -> int:
    if not keep and (ROOT / "mutants").exists():
        shutil.rmtree(ROOT / "mutants")
    env = dict(os.environ, VENDING_SKIP_EMULATORS="1")  # SQLite only; the selection deselects emulator tests too
    mutmut = Path(sys.executable).with_name("mutmut")
    cmd = [str(mutmut), "run", "--max-children", str(max_children)]
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=env)


def load_mutants() -> list[Mutant]:
    from mutmut.stats import status_by_exit_code

    out = []
    for path in MODULES:
        meta = ROOT / "mutants" / (path + ".meta")
        if not meta.exists():
            raise SystemExit(f"{meta} is missing: run mutmut first")
        data = json.loads(meta.read_text())
        for name, code in data["exit_code_by_key"].items():
            out.append(Mutant(name=name, path=path, status=status_by_exit_code[code]))
    return out


def _function_starts(path: str) -> dict[str, int]:
    """``name`` or ``Class.name`` -> the line of its ``def``."""
    tree = ast.parse((ROOT / path).read_text())
    starts: dict[str, int] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            starts[node.name] = node.lineno
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    starts[f"{node.name}.{item.name}"] = item.lineno
    return starts


def describe(mutants: list[Mutant]) -> None:
    """Fill in function, line and diff of each mutant that was not killed."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.utils.format_utils import orig_function_and_class_names_from_key

    starts = {path: _function_starts(path) for path in MODULES}
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        for m in mutants:
            if m.status in KILLED:
                continue
            func, cls = orig_function_and_class_names_from_key(m.name)
            func = func.rpartition(".")[-1]
            m.function = f"{cls}.{func}" if cls else func
            m.diff = get_diff_for_mutant(m.name, path=m.path)
            lines = m.diff.splitlines()
            m.minus = [ln[1:] for ln in lines if ln.startswith("-") and not ln.startswith("---")]
            m.plus = [ln[1:] for ln in lines if ln.startswith("+") and not ln.startswith("+++")]
            m.line = _line_of(m, lines, starts[m.path].get(m.function, 0))
    finally:
        os.chdir(cwd)


def _line_of(m: Mutant, diff: list[str], def_line: int) -> int:
    """The source line of the first changed line: the hunk counts from the function's first line."""
    orig = _orig_function_lines(diff)
    def_index = next((i for i, ln in enumerate(orig) if re.match(r"\s*(async\s+)?def\s", ln)), 0)
    hunk = next((ln for ln in diff if ln.startswith("@@")), "")
    found = re.match(r"@@ -(\d+)", hunk)
    if not found or not def_line:
        return 0
    index = int(found.group(1)) - 1
    for ln in diff[diff.index(hunk) + 1 :]:
        if ln.startswith(("-", "+")):
            break
        index += 1
    return def_line - def_index + index


def _orig_function_lines(diff: list[str]) -> list[str]:
    """The original function, as far as the diff shows it (enough to find its ``def`` line)."""
    out = []
    for ln in diff[2:]:
        if ln.startswith("@@"):
            continue
        if ln.startswith("+"):
            continue
        out.append(ln[1:])
    return out


def load_notes() -> tuple[list[dict[str, str]], str]:
    if not NOTES.exists():
        return [], ""
    data = tomllib.loads(NOTES.read_text())
    return data.get("note", []), data.get("history", "")


def explain(mutants: list[Mutant], notes: list[dict[str, str]]) -> None:
    for m in mutants:
        if m.status in KILLED:
            continue
        plus, minus = "\n".join(m.plus), "\n".join(m.minus)
        for note in notes:
            if note["module"] != m.module:
                continue
            if note.get("function") and note["function"] != m.function:
                continue
            if note.get("mutated", "") not in plus or note.get("original", "") not in minus:
                continue
            m.why = note["why"]
            break


def scores(mutants: list[Mutant]) -> dict[str, Score]:
    out: dict[str, Score] = {}
    for m in mutants:
        for key in (m.path, "overall"):
            s = out.setdefault(key, Score())
            s.total += 1
            s.counts[m.status] += 1
    return out


def table(by: dict[str, Score]) -> list[str]:
    rows = [
        "| module | mutants | killed | timeout | survived | no tests | other | not checked | score |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in (*MODULES, "overall"):
        s = by.get(key, Score())
        named = ("killed", "timeout", "survived", "no tests", "skipped", "not checked")
        other = s.total - sum(s.counts[k] for k in named)
        name = f"`{key}`" if key != "overall" else "**overall**"
        rows.append(
            f"| {name} | {s.tested} | {s.counts['killed']} | {s.counts['timeout']} | {s.counts['survived']} | "
            f"{s.counts['no tests']} | {other} | {s.counts['not checked']} | {s.percent:.1f}% |"
        )
    return rows


def write_report(
    mutants: list[Mutant], by: dict[str, Score], history: str, elapsed_s: float | None, threshold: float
) -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    left = [m for m in mutants if m.status not in (*KILLED, "not checked")]
    lines = [
        "# Mutation testing: identity, policy, grant, ledger",
        "",
        "Generated by `scripts/mutation.sh` (`scripts/mutation.py`), which `make test-long` runs; do not",
        "edit by hand: explanations live in `scripts/mutation_notes.toml`.",
        "",
        f"- mutmut {version('mutmut')}, run {clock_text()}"
        + (f", {elapsed_s / 60:.1f} min wall time on {os.cpu_count()} cores" if elapsed_s else ""),
        f"- threshold: {threshold:.0f}% overall (the run fails below it)",
        "- score: (killed + timeout) / mutants; a mutant no selected test reaches counts as not killed",
        '- tests (SQLite only, `-m "not emulator and not long"`): '
        + ", ".join(f"`{t}`" for t in config["pytest_add_cli_args_test_selection"]),
        "- `vending.identity` mutants are judged by the identity unit tests only (`scripts/mutation_scope.py`)",
        "",
        "## Score",
        "",
        *table(by),
        "",
    ]
    if history.strip():
        lines += ["## History", "", history.strip(), ""]
    lines += [f"## Mutants not killed ({len(left)})", ""]
    if not left:
        lines.append("None.")
    current = None
    for m in sorted(left, key=lambda m: (MODULES.index(m.path), m.line, m.name)):
        if m.path != current:
            current = m.path
            lines += ["", f"### `{m.path}`", ""]
        why = m.why or "UNEXPLAINED"
        change = _one_line_change(m)
        lines.append(f"- line {m.line}, `{m.function}` ({m.status}, `{m.name.rpartition('.')[-1]}`): {change}  ")
        lines.append(f"  {why}")
    REPORT.write_text("\n".join(lines).rstrip() + "\n")


def write_readme_section(mutants: list[Mutant], by: dict[str, Score], elapsed_s: float | None) -> None:
    """Rewrite the "## Mutation testing" section of tests/README.md: how to run, the score per module,
    and every mutant not killed, grouped by its explanation (the diffs are in tests/MUTATION.md)."""
    left = [m for m in mutants if m.status not in (*KILLED, "not checked")]
    groups: dict[str, list[Mutant]] = {}
    for m in sorted(left, key=lambda m: (MODULES.index(m.path), m.line, m.name)):
        groups.setdefault(m.why or "UNEXPLAINED", []).append(m)
    section = [
        "## Mutation testing",
        "",
        "`make test-long` ends with `bash scripts/mutation.sh`: mutmut over `vending/identity.py`,",
        "`vending/policy.py`, `vending/grant.py` and `vending/ledger.py` (the modules that carry the",
        "promise), judged by the SQLite test selection named in `pyproject.toml [tool.mutmut]`. It fails",
        "below 85% overall. `--keep` reuses mutmut's cache; `--report-only` rewrites the reports. This",
        "section and `tests/MUTATION.md` (every survivor with its diff) are written by the run; the",
        "explanations live in `scripts/mutation_notes.toml`.",
        "",
        f"Report written {clock_text()}"
        + (
            f" by a run of {elapsed_s / 60:.0f} min on {os.cpu_count()} cores."
            if elapsed_s
            else " from the last run's results."
        ),
        "",
        *table(by),
        "",
    ]
    unchecked = by["overall"].counts["not checked"]
    if unchecked:
        section += [
            f"This run was stopped before {unchecked} mutants were checked (the `not checked` column); each score is",
            "over the mutants that have a verdict. `bash scripts/mutation.sh --keep` finishes them.",
            "",
        ]
    section += [
        f"### Survivors ({len(left)}), by explanation",
        "",
    ]
    if not left:
        section.append("None.")
    for why, ms in groups.items():
        where = ", ".join(f"`{m.path.removeprefix('vending/')}:{m.line}`" for m in ms)
        section.append(f"- **{len(ms)}** ({where}): {why}")
    text = README.read_text()
    start = text.index("## Mutation testing")
    end = text.find("\n## ", start + 1)
    tail = text[end + 1 :] if end != -1 else ""
    README.write_text(text[:start] + "\n".join(section).rstrip() + "\n" + ("\n" + tail if tail else ""))


def _one_line_change(m: Mutant) -> str:
    def clip(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= 110 else text[:107] + "..."

    minus = clip(" / ".join(m.minus))
    plus = clip(" / ".join(m.plus))
    return f"`{minus}` → `{plus}`".replace("``", "` `")


def clock_text() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="reuse mutmut's cache in mutants/ (quick iterations)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the last run")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threshold", type=float, default=85.0, help="minimum overall score, percent")
    args = parser.parse_args(argv)

    os.chdir(ROOT)
    elapsed: float | None = None
    if not args.report_only:
        start = time.monotonic()
        code = run_mutmut(args.max_children, args.keep)
        elapsed = time.monotonic() - start
        if code != 0:
            print(f"mutmut failed (exit {code})", file=sys.stderr)
            return 1

    mutants = load_mutants()
    describe(mutants)
    notes, history = load_notes()
    explain(mutants, notes)
    by = scores(mutants)

    print()
    print("\n".join(table(by)))
    left = [m for m in mutants if m.status not in (*KILLED, "not checked")]
    print(f"\n{len(left)} mutants not killed:")
    for m in sorted(left, key=lambda m: (MODULES.index(m.path), m.line, m.name)):
        print(f"\n{m.path}:{m.line} {m.function} [{m.status}] {m.name}")
        print(f"  why: {m.why or 'UNEXPLAINED'}")
        print("\n".join("    " + ln for ln in m.diff.splitlines()[2:]))
    unexplained = sum(1 for m in left if not m.why)
    write_report(mutants, by, history, elapsed, args.threshold)
    write_readme_section(mutants, by, elapsed)
    overall = by["overall"].percent
    print(
        f"\nmutation score {overall:.1f}% (threshold {args.threshold:.0f}%); {unexplained} survivors unexplained; "
        f"report: {REPORT.relative_to(ROOT)}" + (f"; {elapsed / 60:.1f} min" if elapsed else "")
    )
    return 0 if overall >= args.threshold else 1


if __name__ == "__main__":
    sys.exit(main())
