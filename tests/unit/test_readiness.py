"""``/readyz`` checks (issue 17, item 6): the store and the IAM endpoint, cheaply, cached."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from vending.errors import UnavailableError
from vending.readiness import PROBE_ID, Readiness


class FakeStore:
    def __init__(self) -> None:
        self.reads: list[tuple[str, str]] = []
        self.fail = False

    def get(self, kind: str, id: str) -> Any:
        self.reads.append((kind, id))
        if self.fail:
            raise OSError("store down")
        return None


@dataclass
class Answer:
    status_code: int


class FakeHttp:
    def __init__(self, status: int | None = 404) -> None:
        self.status = status
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, url: str, **kwargs: Any) -> Answer:
        self.calls.append((url, kwargs))
        if self.status is None:
            raise ConnectionError("refused")
        return Answer(self.status)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ready_when_both_answer_and_the_checks_are_cheap() -> None:
    # GIVEN a store that reads and an IAM endpoint that answers 404 at its root
    store, http = FakeStore(), FakeHttp(404)
    ready = Readiness(store, "https://iamcredentials.googleapis.com/", http_get=http)
    # WHEN checked  THEN ok, after one read of a fixed (missing) document and one GET without credentials
    assert ready.check() == {"status": "ok", "checks": {"store": "ok", "iam": "ok"}}
    assert store.reads == [("kill_switches", PROBE_ID)]
    [(url, kwargs)] = http.calls
    assert url == "https://iamcredentials.googleapis.com/"
    assert "headers" not in kwargs and kwargs["timeout"] == 2.0 and kwargs["allow_redirects"] is False


@pytest.mark.parametrize(
    ("store_fails", "iam_status", "failed"),
    [(True, 404, "store"), (False, None, "iam"), (False, 503, "iam"), (True, None, "iam, store")],
)
def test_not_ready_names_the_failed_checks(store_fails: bool, iam_status: int | None, failed: str) -> None:
    store = FakeStore()
    store.fail = store_fails
    ready = Readiness(store, "https://iam.example", http_get=FakeHttp(iam_status))
    with pytest.raises(UnavailableError) as info:
        ready.check()
    assert info.value.reason == "not-ready"
    assert info.value.message == f"Not ready: {failed} unavailable."
    assert info.value.http_status == 503


def test_results_are_cached_for_the_ttl() -> None:
    # GIVEN a public endpoint anyone may call in a loop
    store, http, clock = FakeStore(), FakeHttp(404), Clock()
    ready = Readiness(store, "https://iam.example", http_get=http, monotonic=clock, ttl_s=10.0)
    # WHEN called 50 times within 10 s  THEN one store read and one HTTP request
    for _ in range(50):
        ready.check()
    assert len(store.reads) == 1 and len(http.calls) == 1
    # AND just before the TTL still cached, at the TTL checked again
    clock.now += 9.999
    ready.check()
    assert len(store.reads) == 1
    clock.now += 0.001
    store.fail = True
    with pytest.raises(UnavailableError):
        ready.check()
    assert len(store.reads) == 2
