"""Fault injection for ``/toolchain/v2`` calls, configured through ``POST /_emulator/faults``.

Per call, in this order: latency; a 429 storm (``Retry-After``); a seeded share of 5xx; then, after
authentication, per-path rules (e.g. the next POST of a tool named X answers 400). After a successful
mutating call, "commit then drop" closes the TCP connection without sending the response.
Injected errors happen before the handler runs, so they never change state.

Lies (``lies``) are told after the handler ran (its change is made): a 2xx answer whose body is cut
off, of the wrong shape, 20 MB long, or a listing whose ``next`` points at the page itself. With
``rate_limit.retry_after_header`` a 429 names any ``Retry-After`` (``3600``, ``inf``, ``1e308``).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator
from typing import Any, Literal, Self

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from emulators.otc.clock import Clock
from emulators.otc.errors import ApiError
from emulators.otc.paging import encode_cursor
from emulators.otc.request_keys import EARLY, FAULT

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RateLimitFault(_Strict):
    """Answer 429 for the next ``count`` calls and/or for ``seconds`` (both: whichever ends first)."""

    count: int | None = Field(default=None, ge=1)
    seconds: float | None = Field(default=None, gt=0)
    retry_after: int = Field(default=1, ge=0)
    """Value of the ``Retry-After`` header, in seconds."""
    retry_after_header: str | None = Field(default=None, min_length=1, max_length=64)
    """Sent as ``Retry-After`` instead of ``retry_after`` (e.g. ``3600``, ``inf``, ``1e308``); the
    emulator still judges earliness by ``retry_after``."""

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        if self.count is None and self.seconds is None:
            raise ValueError("rate_limit needs 'count' and/or 'seconds'")
        return self


class ErrorRule(_Strict):
    """A scripted error for matching calls, checked after authentication."""

    path: str
    """Regular expression that must match the whole request path."""
    method: str | None = None
    name: str | None = None
    """Only when the JSON body's ``name`` equals this."""
    status: int = Field(default=400, ge=400, le=599)
    code: str | None = None
    message: str = "Request rejected (emulated fault)"
    times: int | None = Field(default=None, ge=1)
    """How many matching calls fail; None: every one (permanent)."""


class LieRule(_Strict):
    """A 2xx answer of matching calls replaced by a lie, after the handler ran.

    ``truncate``: the body cut in half; ``wrong_shape``: a JSON array instead of the object;
    ``self_next``: a listing whose ``next`` cursor names the page itself, so paging never ends;
    ``huge``: the answer padded to ``size_bytes`` more, streamed without a ``Content-Length``.
    """

    path: str
    """Regular expression that must match the whole request path."""
    method: str | None = "GET"
    lie: Literal["truncate", "wrong_shape", "self_next", "huge"]
    size_bytes: int = Field(default=20 * 1024 * 1024, ge=1, le=256 * 1024 * 1024)
    times: int | None = Field(default=None, ge=1)
    """How many matching answers lie; None: every one."""


class FaultConfig(_Strict):
    seed: int | None = None
    """Seed of the random draws behind ``error_rate`` (same seed and call order: same failures)."""
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of calls answered with ``error_status`` (one random draw per call)."""
    error_status: int = Field(default=503, ge=500, le=599)
    rate_limit: RateLimitFault | None = None
    latency_ms: int = Field(default=0, ge=0)
    drop_after_commit: int = Field(default=0, ge=0)
    """The next N successful mutating calls are applied, then the connection closes unanswered."""
    rules: list[ErrorRule] = Field(default_factory=list)
    lies: list[LieRule] = Field(default_factory=list)


class FaultStatus(BaseModel):
    """``GET /_emulator/faults``: the configuration and what is left of it."""

    config: FaultConfig
    rate_limit_remaining: int | None
    rate_limit_until: float | None
    drop_after_commit_remaining: int
    rules_remaining: list[int | None]
    lies_remaining: list[int | None] = Field(default_factory=list)
    retry_not_before: float | None


class FaultInjector:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.configure(FaultConfig())

    def configure(self, config: FaultConfig) -> None:
        now = self._clock.now()
        self.config = config
        self._rng = random.Random(config.seed)
        rl = config.rate_limit
        self._storm_left = rl.count if rl else None
        self._storm_until = now + rl.seconds if rl and rl.seconds is not None else None
        self._storm_active = rl is not None
        self._drops_left = config.drop_after_commit
        self._rules_left: list[int | None] = [r.times for r in config.rules]
        self._compiled = [re.compile(r.path) for r in config.rules]
        self._lies_left: list[int | None] = [r.times for r in config.lies]
        self._lie_paths = [re.compile(r.path) for r in config.lies]
        self.retry_not_before: float | None = None

    def clear(self) -> None:
        self.configure(FaultConfig())

    def status(self) -> FaultStatus:
        return FaultStatus(
            config=self.config,
            rate_limit_remaining=self._storm_left if self._storm_active else None,
            rate_limit_until=self._storm_until if self._storm_active else None,
            drop_after_commit_remaining=self._drops_left,
            rules_remaining=list(self._rules_left),
            lies_remaining=list(self._lies_left),
            retry_not_before=self.retry_not_before,
        )

    def _in_storm(self, now: float) -> bool:
        if not self._storm_active:
            return False
        if (self._storm_left is not None and self._storm_left <= 0) or (
            self._storm_until is not None and now >= self._storm_until
        ):
            self._storm_active = False
            return False
        if self._storm_left is not None:
            self._storm_left -= 1
        return True

    async def before_auth(self, request: web.Request) -> None:
        """Latency, 429 storm and random 5xx; records ``otc.early``/``otc.fault`` on the request."""
        if self.config.latency_ms:
            await asyncio.sleep(self.config.latency_ms / 1000)
        now = self._clock.now()
        if self.retry_not_before is not None:
            request[EARLY] = now < self.retry_not_before
        rl = self.config.rate_limit
        if rl is not None and self._in_storm(now):
            self.retry_not_before = now + rl.retry_after
            request[FAULT] = "429"
            raise ApiError(
                429,
                "Rate limit exceeded, retry later (emulated fault)",
                headers={"Retry-After": rl.retry_after_header or str(rl.retry_after)},
            )
        if self.config.error_rate > 0 and self._rng.random() < self.config.error_rate:
            request[FAULT] = "5xx"
            raise ApiError(
                self.config.error_status,
                "The service is temporarily unavailable (emulated fault)",
            )

    def apply_rules(self, request: web.Request, body: Any) -> None:
        body_name = body.get("name") if isinstance(body, dict) else None
        for n, rule in enumerate(self.config.rules):
            if self._rules_left[n] == 0:
                continue
            if rule.method is not None and rule.method.upper() != request.method:
                continue
            if not self._compiled[n].fullmatch(request.path):
                continue
            if rule.name is not None and rule.name != body_name:
                continue
            left = self._rules_left[n]
            if left is not None:
                self._rules_left[n] = left - 1
            request[FAULT] = "rule"
            raise ApiError(rule.status, rule.message, code=rule.code)

    def take_drop(self, request: web.Request) -> bool:
        """Whether to drop the connection after this (successful) call."""
        if request.method not in MUTATING or self._drops_left <= 0:
            return False
        self._drops_left -= 1
        return True

    def lie(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        """``response`` (a 2xx JSON answer), or the first matching lie told instead of it."""
        if response.status >= 300 or not isinstance(response, web.Response):
            return response
        if not isinstance(response.body, bytes):
            return response
        for n, rule in enumerate(self.config.lies):
            if self._lies_left[n] == 0 or not self._lie_paths[n].fullmatch(request.path):
                continue
            if rule.method is not None and rule.method.upper() != request.method:
                continue
            left = self._lies_left[n]
            if left is not None:
                self._lies_left[n] = left - 1
            request[FAULT] = f"lie:{rule.lie}"
            return _told(rule, request, response.body, response.status)
        return response


def _told(rule: LieRule, request: web.Request, body: bytes, status: int) -> web.Response:
    if rule.lie == "truncate":
        return web.Response(status=status, body=body[: len(body) // 2], content_type="application/json")
    if rule.lie == "wrong_shape":
        return web.Response(status=status, body=b"[]", content_type="application/json")
    answer: dict[str, Any] = json.loads(body)
    if rule.lie == "self_next":
        start = request.query.get("start") or encode_cursor(0)  # "after 0": the first page again
        answer["next"] = {"href": str(request.url), "start": start}
        return web.json_response(answer, status=status)
    head = json.dumps(answer)[:-1].encode() + b', "padding": "'
    return web.Response(status=status, body=_padded(head, rule.size_bytes), content_type="application/json")


async def _padded(head: bytes, size: int) -> AsyncIterator[bytes]:
    """Valid JSON, ``size`` bytes longer than ``head``, in 64 KiB chunks (so no Content-Length)."""
    yield head
    chunk = b"x" * 65536
    for sent in range(0, size, len(chunk)):
        yield chunk[: min(len(chunk), size - sent)]
    yield b'"}'
