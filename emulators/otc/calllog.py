"""The call log: every request outside ``/_emulator/`` with its outcome (``GET /_emulator/calls``).

Secrets stay out of it: the ``apikey`` of token requests is masked and headers are not recorded.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from emulators.otc.clock import Clock
from emulators.otc.models import CallRecord, iso, utc_now_from
from emulators.otc.request_keys import DROPPED, EARLY, FAULT, TRACE

CONTROL_PREFIX = "/_emulator"
_MASKED_FORM_KEYS = frozenset({"apikey", "refresh_token", "password"})
_MAX_TEXT = 2048


class CallLog:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._records: list[CallRecord] = []
        self._offset = 0
        """Index of ``_records[0]``: indexes stay stable across a reset of the log."""

    def __len__(self) -> int:
        return self._offset + len(self._records)

    def since(self, index: int = 0) -> list[CallRecord]:
        return self._records[max(0, index - self._offset) :]

    def clear(self) -> None:
        self._offset += len(self._records)
        self._records = []

    def add(self, **fields: Any) -> CallRecord:
        now = self._clock.now()
        record = CallRecord(index=len(self), time=iso(utc_now_from(now)), epoch=now, **fields)
        self._records.append(record)
        return record


async def _request_body(request: web.Request) -> Any:
    if not request.body_exists:
        return None
    raw = await request.read()
    if request.content_type == "application/x-www-form-urlencoded":
        form = await request.post()
        return {k: ("***" if k in _MASKED_FORM_KEYS else str(v)) for k, v in form.items()}
    try:
        return json.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", errors="replace")
        return text[:_MAX_TEXT]


def call_log_middleware(log: CallLog) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(CONTROL_PREFIX):
            return await handler(request)
        body = await _request_body(request)
        started = time.monotonic()
        status: int | None = None
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            dropped = request.get(DROPPED, False)
            log.add(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                status=status,
                body=body,
                trace=request.get(TRACE),
                fault="drop" if dropped else request.get(FAULT),
                dropped=dropped,
                early=request.get(EARLY),
                duration_ms=round((time.monotonic() - started) * 1000, 3),
            )

    return middleware
