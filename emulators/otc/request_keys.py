"""Per-request facts shared by the middlewares and the call log (typed ``web.RequestKey``s)."""

from __future__ import annotations

from aiohttp import web

TRACE = web.RequestKey("otc_trace", str)
"""The ``X-Global-Transaction-ID`` of this call (also the error body's ``trace``)."""
FAULT = web.RequestKey("otc_fault", str)
"""Which injected fault answered: ``429``, ``5xx``, ``rule`` or ``lie:<kind>``."""
EARLY = web.RequestKey("otc_early", bool)
"""Whether the call came before the time a previous 429 advertised (unset: none advertised)."""
DROPPED = web.RequestKey("otc_dropped", bool)
"""The change was committed and the connection closed without an answer."""
