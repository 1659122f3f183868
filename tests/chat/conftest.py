"""Fixtures of the chat-ops tests: a ``ChatRig`` on the SQLite harness."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chat.rig import ChatRig
from tests.support.app import ServiceHarness
from tests.support.fixtures import *


@pytest.fixture
def rig(harness: ServiceHarness, tmp_path: Path) -> Iterator[ChatRig]:
    r = ChatRig(harness, tmp_path)
    yield r
    r.close()
