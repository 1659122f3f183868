"""Batch helpers for the owners' sweep steps: page through due documents, write with preconditions.

Each step queries by state and due time (a declared index), so its cost grows with
the records that are due, not with the size of the collection; each write carries
``expect_version``, so two sweeps at once never both act on a record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from vending.store.base import Doc, Filter, Query, Store, StoreConflict, Write

BATCH = 200
MAX_BATCHES = 50  # at most 10,000 records per step per run; the next run continues


def due(store: Store, kind: str, filters: tuple[Filter, ...], order: str) -> Iterator[list[Doc]]:
    """Batches of matching documents, oldest first."""
    after = None
    for _ in range(MAX_BATCHES):
        batch = store.query(Query(kind, filters, order_by=order, limit=BATCH, start_after=after))
        if not batch:
            return
        yield batch
        if len(batch) < BATCH:
            return
        after = (batch[-1].data[order], batch[-1].id)


def apply_each(store: Store, docs: list[Doc], change: Callable[[Doc], Write]) -> list[Doc]:
    """Write one batch with per-document preconditions; on a race fall back to one by one.

    Returns the documents this caller changed (a concurrent sweep took the others).
    """
    writes = [change(d) for d in docs]
    try:
        store.write(writes)
        return docs
    except StoreConflict:
        won = []
        for doc, write in zip(docs, writes, strict=True):
            try:
                store.write([write])
                won.append(doc)
            except StoreConflict:
                continue
        return won
