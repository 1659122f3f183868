"""vending.startup.loading: no garbage collection while the service loads, the survivors frozen after."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator

import pytest

from vending.startup import loading


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    gc.unfreeze()
    if was:
        gc.enable()


def test_collection_is_off_inside_and_back_on_after_with_the_survivors_frozen() -> None:
    gc.enable()
    gc.unfreeze()
    with loading():
        assert not gc.isenabled()
        kept = [[i] for i in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(kept)


def test_a_nested_block_resumes_collection_only_at_the_outermost() -> None:
    gc.enable()
    with loading():
        with loading():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_failure_while_loading_still_resumes_collection() -> None:
    gc.enable()
    with pytest.raises(SystemExit), loading():
        raise SystemExit(2)
    assert gc.isenabled()


def test_collection_stays_off_after_when_it_was_off_before() -> None:
    gc.disable()
    with loading():
        pass
    assert not gc.isenabled()


def test_main_leaves_the_collector_on() -> None:
    """Importing the entry points (and building the service on first use) never leaves collection off."""
    code = (
        "import gc, main\n"
        "from vending import wiring\n"
        "wiring.handlers()\n"
        "assert gc.isenabled(), 'collector left off'\n"
        "assert gc.get_freeze_count() > 10000, gc.get_freeze_count()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
