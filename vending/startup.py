"""Loading the service without the cyclic garbage collector.

Loading the service (its modules, the policy's pydantic models, the store and
IAM clients) allocates tens of thousands of objects that live as long as the
process. While they load, the collector would scan them again and again with
nothing to free, including one full collection. That costs about 70 ms of
every cold start; see "The cold path" in ``bench/README.md``.

Instead this follows the pattern in the documentation of Python's
``gc.freeze``: collection is off while the objects load, then the survivors
are frozen (later full collections skip them) and collection resumes.
``main.py`` loads the modules and the policy this way; ``vending.wiring`` builds
the service, and ``vending.chat.wiring`` the chat-ops pieces, on first use the
same way.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """Collection off for the block, then what survives is frozen; nested blocks resume only at the outermost."""
    resume = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if resume:
            gc.enable()
