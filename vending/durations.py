"""The one duration grammar of the service: the policy file, the HTTP API and the client.

A duration is whole seconds, written as a number (``600``), or a string of digits with an
optional unit: ``"600"``, ``"600s"``, ``"10m"``, ``"1h"``. Nothing else (no ``1h30m``, no
fractions, no spaces): what one place accepts, every place accepts.
"""

from __future__ import annotations

import re

GRAMMAR = "600, '600', '600s', '10m' or '1h'"
_DURATION_RE = re.compile(r"([0-9]{1,9})([smh]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_duration(value: object) -> int:
    """Seconds from ``600``, ``"600"``, ``"600s"``, ``"10m"`` or ``"1h"``; ValueError otherwise.

    The sign and range are the caller's to check (the policy's fields, ``inputs.lifetime``)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration such as {GRAMMAR}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value)
        if match:
            return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(f"must be a duration such as {GRAMMAR}")
