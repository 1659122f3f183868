"""The function archive, built the way Terraform builds it.

``terraform/modules/token-vending/main.tf`` zips every file of the source
directory that matches one of ``var.source_include`` and none of
``var.source_exclude`` (Terraform's ``fileset()``: ``**`` spans directories,
``*`` and ``?`` stay within one), plus the policy as ``config/deployed.yaml``.
The lists are read from ``variables.tf`` with python-hcl2, so this copy of
the rule cannot drift from the deployed one.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import hcl2
from hcl2 import SerializationOptions

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "terraform" / "modules" / "token-vending"
DEPLOYED_CONFIG = "config/deployed.yaml"  # local.deployed_config_path in main.tf


def source_lists(module_dir: Path = MODULE_DIR) -> tuple[list[str], list[str]]:
    """(source_include, source_exclude): the defaults of the module's variables."""
    options = SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)
    with (module_dir / "variables.tf").open(encoding="utf-8") as fh:
        doc = hcl2.load(fh, serialization_options=options)
    variables: dict[str, dict[str, object]] = {}
    for entry in doc.get("variable", []):
        variables.update(entry)
    include = variables["source_include"]["default"]
    exclude = variables["source_exclude"]["default"]
    assert isinstance(include, list) and isinstance(exclude, list)
    return [str(p) for p in include], [str(p) for p in exclude]


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Terraform ``fileset()`` semantics: ``**/`` is zero or more directories, ``*`` one segment's part."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def _candidates(source_dir: Path, include: list[str]) -> set[str]:
    """Every file under the literal directory prefix of an include pattern (not the whole tree)."""
    files: set[str] = set()
    for pattern in include:
        literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
        top = source_dir / literal.rsplit("/", 1)[0] if "/" in literal else source_dir
        if not top.is_dir():
            continue
        if top == source_dir and "**" not in pattern:  # a top-level pattern: the root's files only
            files.update(p.name for p in source_dir.iterdir() if p.is_file())
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if d != ".git"]
            for name in filenames:
                files.add((Path(dirpath) / name).relative_to(source_dir).as_posix())
    return files


def archive_files(source_dir: Path = REPO, module_dir: Path = MODULE_DIR) -> list[str]:
    """The relative paths Terraform would zip (without the deployed policy)."""
    include, exclude = source_lists(module_dir)
    inc = [glob_regex(p) for p in include]
    exc = [glob_regex(p) for p in exclude]
    return sorted(
        f
        for f in _candidates(source_dir, include)
        if any(r.fullmatch(f) for r in inc) and not any(r.fullmatch(f) for r in exc)
    )


def build_archive(dest: Path, policy_text: str, source_dir: Path = REPO) -> Path:
    """Write the zip Terraform would build (code plus ``config/deployed.yaml``) and return its path."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel in archive_files(source_dir):
            zf.write(source_dir / rel, rel)
        zf.writestr(DEPLOYED_CONFIG, policy_text)
    return dest
