"""A trivial HTTP function: the ceiling of one functions-framework instance.

    python -m functions_framework --target trivial --source bench/trivial.py --port P

Reads the body like a real handler would and answers a small JSON object.
"""

from __future__ import annotations

from typing import Any

import functions_framework


@functions_framework.http
def trivial(request: Any) -> Any:
    request.get_data()
    return {"ok": True}
