"""One page of a listing merged from several queries, newest first, with an opaque cursor.

A listing that a single declared query shape cannot serve (the access requests
of every entitlement an approver decides; an effective state that spans stored
states) is a list of ``Part``s: each one query (equality filters, ordered by
``order`` descending) and an optional predicate on the document. Parts carry a
``phase``: the page lists phase 0 first (an approver's pending requests), then
phase 1, each newest first. The cursor is (phase, order value, id) of the last
document of the page, as base64url JSON; a cursor that is not one of ours is
400 ``invalid-page-token``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vending import clock
from vending.errors import BadRequestError
from vending.store.base import Doc, Filter, Query, Store


@dataclass(frozen=True)
class Part:
    """One query of a merged listing, with an optional in-memory filter."""

    filters: tuple[Filter, ...]
    keep: Callable[[dict[str, Any]], bool] | None = None
    phase: int = 0


@dataclass(frozen=True)
class Cursor:
    """Where a merged listing resumes: the phase, order value and id of the last item."""

    phase: int
    value: _dt.datetime
    id: str


def encode_cursor(cursor: Cursor) -> str:
    raw = json.dumps([cursor.phase, cursor.value.isoformat(), cursor.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> Cursor:
    try:
        if len(token) > 200:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        phase, value, doc_id = json.loads(raw)
        when = _dt.datetime.fromisoformat(value)
        if (
            type(phase) is not int
            or phase not in (0, 1)
            or when.tzinfo is None
            or not isinstance(doc_id, str)
            or len(doc_id) != 32
        ):
            raise ValueError("bad cursor")
        return Cursor(phase, when.astimezone(clock.UTC), doc_id)
    except (ValueError, TypeError, OverflowError, RecursionError, UnicodeDecodeError) as exc:
        raise BadRequestError(
            "page_token is not a token returned by this service.", reason="invalid-page-token"
        ) from exc


def merged_page(
    store: Store, kind: str, parts: Sequence[Part], *, order: str, page_size: int, page_token: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Up to ``page_size`` documents of ``parts``: phase by phase, newest first; and the next cursor."""
    cursor = decode_cursor(page_token) if page_token else None
    found: dict[str, tuple[int, Doc]] = {}
    for part in parts:
        if cursor is not None and part.phase < cursor.phase:
            continue
        after = (cursor.value, cursor.id) if cursor is not None and part.phase == cursor.phase else None
        matched = 0
        while True:
            batch = store.query(
                Query(kind, part.filters, order_by=order, descending=True, limit=page_size + 1, start_after=after)
            )
            for doc in batch:
                if part.keep is None or part.keep(doc.data):
                    found.setdefault(doc.id, (part.phase, doc))
                    matched += 1
            if len(batch) <= page_size or matched > page_size:
                break
            after = (batch[-1].data[order], batch[-1].id)
    ranked = sorted(found.values(), key=lambda pd: (pd[1].data[order], pd[1].id), reverse=True)
    ranked.sort(key=lambda pd: pd[0])  # stable: phase first, newest first within a phase
    page = ranked[:page_size]
    token = None
    if len(ranked) > page_size:
        phase, last = page[-1]
        token = encode_cursor(Cursor(phase, last.data[order], last.id))
    return [doc.data for _, doc in page], token
