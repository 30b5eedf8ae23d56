"""Toolchain API v2 tools client: timeouts, retries, rate limit, circuit breaker, ambiguous creates.

Every call: breaker check -> Retry-After gate -> token bucket -> bearer token -> request with a
total timeout. 429 pushes the shared "not before" gate by ``Retry-After``; 5xx and network errors
back off with capped exponential backoff and full jitter; a 401 forces one token refresh. A POST that
got no clean answer (timeout, dropped connection, 5xx) may have been committed: :meth:`create_tool`
then looks the deterministic name up before it posts again, so retries never duplicate a tool.

What OTC answers is input too, bounded like any other: a body is read up to ``max_body_bytes``; a
2xx is parsed into its documented shape (a tool, a page of tools) or it is an
:class:`OtcMalformedError`, retried like a 5xx (never ``{}`` read as "no tools", which made the audit
recreate every tool); a listing stops at a repeated ``next`` cursor, at ``list_max_pages`` /
``list_max_items`` and at one deadline for all its pages; ``Retry-After`` is clamped to
``retry_after_max_s`` (``inf`` and ``1e308`` parse as floats).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
from pydantic import BaseModel, ConfigDict, ValidationError

from services.otc_writer.otc_client.errors import (
    TRANSACTION_HEADER,
    OtcAmbiguousError,
    OtcCircuitOpenError,
    OtcEndlessListingError,
    OtcError,
    OtcMalformedError,
    OtcPermanentError,
    OtcRetryableError,
    OtcTooLargeError,
    OtcUnavailableError,
    classify,
    ibm_message,
)
from services.otc_writer.otc_client.iam import IamTokenManager
from services.otc_writer.otc_client.resilience import (
    CircuitBreaker,
    Clock,
    NotBeforeGate,
    Sleep,
    TokenBucket,
    parse_retry_after,
    read_bounded,
)
from shared.backoff import full_jitter

log = logging.getLogger(__name__)

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True, kw_only=True)
class OtcClientConfig:
    api_url: str
    """Toolchain API v2 base, e.g. ``https://api.us-south.devops.cloud.ibm.com/toolchain/v2``."""
    rate_limit: float = 10.0
    """Requests per second (token bucket, burst = max(1, rate))."""
    max_concurrency: int = 8
    timeout_s: float = 10.0
    """Total timeout of one HTTP request."""
    deadline_s: float = 45.0
    """Upper bound of one operation with all its retries and waits."""
    max_attempts: int = 5
    backoff_base_s: float = 0.2
    backoff_cap_s: float = 10.0
    default_retry_after_s: float = 1.0
    breaker_threshold: int = 5
    breaker_reset_s: float = 10.0
    page_limit: int = 100
    max_body_bytes: int = 2 * 1024 * 1024
    """Largest answer body read; a larger 2xx is an :class:`OtcTooLargeError`."""
    list_max_pages: int = 200
    list_max_items: int = 10_000
    """Bounds of one listing (all its pages); past them it is an :class:`OtcEndlessListingError`."""
    retry_after_max_s: float = 300.0
    """Longest hold a ``Retry-After`` can impose (a larger or non-finite one is clamped to it)."""


class Tool(BaseModel):
    """A Toolchain API v2 tool (otc-api.md §4.4); only the fields we use are required."""

    model_config = ConfigDict(extra="ignore")

    id: str
    toolchain_id: str
    tool_type_id: str
    name: str | None = None
    parameters: dict[str, Any] = {}
    state: str | None = None


class _Cursor(BaseModel):
    model_config = ConfigDict(extra="ignore")

    start: str | None = None


class _ToolsPage(BaseModel):
    """One page of ``GET /toolchains/{id}/tools`` (otc-api.md §4.5): ``tools`` is required."""

    model_config = ConfigDict(extra="ignore")

    tools: list[Tool]
    next: _Cursor | None = None


def _tool(raw: bytes) -> Tool:
    return Tool.model_validate_json(raw)


def _page(raw: bytes) -> _ToolsPage:
    return _ToolsPage.model_validate_json(raw)


def _nothing(raw: bytes) -> None:
    """A DELETE's answer: its status says it all (204, no body)."""


class OtcClient:
    def __init__(
        self,
        config: OtcClientConfig,
        session: aiohttp.ClientSession,
        iam: IamTokenManager,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._session = session
        self._iam = iam
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._base = config.api_url.rstrip("/")
        self.bucket = TokenBucket(config.rate_limit, clock=clock)
        self.gate = NotBeforeGate(clock=clock)
        self.breaker = CircuitBreaker(config.breaker_threshold, config.breaker_reset_s, clock=clock)
        self._concurrency = asyncio.Semaphore(config.max_concurrency)
        self.calls = 0
        """HTTP requests sent to the Toolchain API (metrics and benchmarks)."""
        self.probes = 0
        """Health probes sent while OTC was judged down (:meth:`probe`)."""
        self.rate_limited = 0
        """429 answers (each pushed the Retry-After gate)."""
        self.retries = 0
        """Attempts repeated after a retryable failure (429, 5xx, network)."""

    # --- tools API ---

    async def list_tools(self, toolchain_id: str) -> list[Tool]:
        """All tools of a toolchain, following ``next.start`` until the last page.

        One deadline (``deadline_s``) for all the pages; a cursor seen before, more than
        ``list_max_pages`` pages or ``list_max_items`` tools end it with
        :class:`OtcEndlessListingError`: a listing that does not end is never returned in part.
        """
        cfg = self.config
        tools: list[Tool] = []
        seen: set[str] = set()
        start: str | None = None
        path = f"/toolchains/{quote(toolchain_id, safe='')}/tools"
        deadline = self._clock() + cfg.deadline_s
        for pages in range(1, cfg.list_max_pages + 1):
            params = {"limit": str(cfg.page_limit)} | ({"start": start} if start else {})
            page = await self._call("GET", path, parse=_page, params=params, deadline=deadline)
            tools.extend(page.tools)
            start = page.next.start if page.next else None
            if not start:
                return tools
            why = self._endless(start, seen, len(tools), deadline)
            if why:
                raise OtcEndlessListingError(f"{why} after {pages} pages", method="GET", path=path)
            seen.add(start)
        raise OtcEndlessListingError(f"more than {cfg.list_max_pages} pages", method="GET", path=path)

    def _endless(self, start: str, seen: set[str], items: int, deadline: float) -> str | None:
        """Why a listing must stop before fetching the page at ``start``, if it must."""
        if start in seen:
            return "the next cursor repeated an earlier one"
        if items > self.config.list_max_items:
            return f"more than {self.config.list_max_items} tools"
        if self._clock() >= deadline:
            return f"no end within {self.config.deadline_s:g}s"
        return None

    async def find_tool_by_name(self, toolchain_id: str, name: str) -> list[Tool]:
        return [t for t in await self.list_tools(toolchain_id) if t.name == name]

    async def get_tool(self, toolchain_id: str, tool_id: str) -> Tool:
        return await self._call("GET", self._tool_path(toolchain_id, tool_id), parse=_tool)

    async def create_tool(
        self, toolchain_id: str, *, tool_type_id: str, name: str, parameters: dict[str, Any]
    ) -> Tool:
        """POST a tool; after an ambiguous attempt, adopt a tool with that name instead of re-posting."""
        path = f"/toolchains/{quote(toolchain_id, safe='')}/tools"
        payload = {"tool_type_id": tool_type_id, "name": name, "parameters": parameters}
        deadline = self._clock() + self.config.deadline_s
        attempt = 0
        while True:
            try:
                return await self._call(
                    "POST",
                    path,
                    parse=_tool,
                    payload=payload,
                    idempotent=False,
                    deadline=deadline,
                    write=True,
                )
            except OtcAmbiguousError as exc:
                attempt += 1
                log.warning(
                    "create outcome unknown, looking the tool up by name",
                    extra={"toolchain_id": toolchain_id, "tool_name": name, "error": str(exc)},
                )
                found = await self.find_tool_by_name(toolchain_id, name)
                if found:
                    return found[0]
                if attempt >= self.config.max_attempts or self._clock() >= deadline:
                    raise self._unavailable_or(exc) from exc
                await self._backoff(attempt, deadline)

    async def update_tool(self, toolchain_id: str, tool_id: str, patch: dict[str, Any]) -> Tool:
        """Merge-patch (RFC 7386): a key set to None is removed."""
        return await self._call(
            "PATCH",
            self._tool_path(toolchain_id, tool_id),
            parse=_tool,
            payload=patch,
            content_type=MERGE_PATCH,
            write=True,
        )

    async def delete_tool(self, toolchain_id: str, tool_id: str) -> None:
        await self._call("DELETE", self._tool_path(toolchain_id, tool_id), parse=_nothing)

    @staticmethod
    def _tool_path(toolchain_id: str, tool_id: str) -> str:
        return f"/toolchains/{quote(toolchain_id, safe='')}/tools/{quote(tool_id, safe='')}"

    # --- transport ---

    async def _backoff(self, attempt: int, deadline: float) -> None:
        delay = full_jitter(
            attempt - 1, base=self.config.backoff_base_s, cap=self.config.backoff_cap_s, rng=self._rng
        )
        await self._sleep(max(0.0, min(delay, deadline - self._clock())))

    async def _call[T](
        self,
        method: str,
        path: str,
        *,
        parse: Callable[[bytes], T],
        payload: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        content_type: str = JSON,
        idempotent: bool = True,
        deadline: float | None = None,
        write: bool = False,
    ) -> T:
        """One logical call with retries; returns the 2xx body as ``parse`` reads it.

        ``parse`` raises ``ValueError`` (pydantic's ``ValidationError`` is one) for a body that is not
        the documented answer: an :class:`OtcMalformedError`, retried here like a 5xx.
        ``write``: a tool write, whose permanent answer is a refusal of its content (``OtcRefusedError``).
        """
        deadline = deadline if deadline is not None else self._clock() + self.config.deadline_s
        request = _Request(method, path, payload, params, content_type, idempotent, write)
        refreshed = False
        attempt = 0
        last: OtcError | None = None
        while True:
            attempt += 1
            try:
                return await self._attempt(request, parse)
            except _Unauthorized as exc:
                if refreshed:
                    raise OtcPermanentError(
                        "OTC refused a freshly issued IAM token",
                        status=401,
                        transaction_id=exc.transaction_id,
                        method=method,
                        path=path,
                    ) from None
                refreshed = True
                self._iam.invalidate(exc.token)
                attempt -= 1
                continue
            except (OtcAmbiguousError, OtcCircuitOpenError):
                raise
            except OtcRetryableError as exc:
                last = exc
            if attempt >= self.config.max_attempts or self._clock() >= deadline:
                assert last is not None
                raise self._unavailable_or(last) from last
            if self.gate.not_before > deadline:
                # The advertised Retry-After ends after our deadline: OTC holds us off as a whole.
                raise self._unavailable_or(last) from last
            self.retries += 1
            if last.status != 429:
                await self._backoff(attempt, deadline)

    def _unavailable_or(self, exc: OtcRetryableError) -> OtcRetryableError:
        """``exc`` as :class:`OtcUnavailableError` when OTC as a whole is down or holding us off.

        That is decided here, once: the circuit is not closed (failures across all calls), or OTC
        answers 429 / pushed its Retry-After past our deadline. A lone transient failure with a
        healthy OTC stays the message's own and spends an attempt.
        """
        if isinstance(exc, OtcUnavailableError):
            return exc
        if self.breaker.state != "closed" or exc.status == 429 or self.gate.not_before > self._clock():
            return OtcUnavailableError(
                exc.message,
                status=exc.status,
                code=exc.code,
                transaction_id=exc.transaction_id,
                method=exc.method,
                path=exc.path,
            )
        return exc

    async def probe(self) -> bool:
        """One cheap call past the circuit: does IAM issue a token and the Toolchain API answer?

        Any answer but 5xx/429 (a 400 or 404 included) means OTC is up; success closes the circuit at
        once, so held messages resume within a probe interval of OTC's return, not after
        ``breaker_reset_s``. Never raises.
        """
        if self.gate.not_before > self._clock():
            return False
        self.probes += 1
        try:
            token = await self._iam.token()
            answer = await self._exchange(
                "GET",
                "/toolchains",
                params={"limit": "1"},
                data=None,
                headers={"Authorization": f"Bearer {token}", "Accept": JSON},
            )
        except (OtcError, aiohttp.ClientError, TimeoutError):
            return False
        status = answer.status
        if status == 429:
            self._hold_off(answer.retry_after)
            return False
        if status >= 500:
            return False
        self.breaker.success()
        return True

    async def _attempt[T](self, request: _Request, parse: Callable[[bytes], T]) -> T:
        if not self.breaker.allow():
            raise OtcCircuitOpenError(
                f"circuit open after repeated failures; retry in {self.breaker.retry_in():.1f}s",
                method=request.method,
                path=request.path,
            )
        verdict = False
        try:
            await self.gate.wait(self._sleep)
            async with self._concurrency:
                await self.gate.wait(self._sleep)
                await self.bucket.acquire(self._sleep)
                token = await self._iam.token()
                # A 429 answered while we waited for a token binds us too (Retry-After is global).
                await self.gate.wait(self._sleep)
                result = await self._send(request, token, parse)
            self.breaker.success()
            verdict = True
            return result
        except OtcError as exc:
            if exc.status is None or exc.status >= 500 or exc.status == 408 or _lied(exc):
                self.breaker.failure()  # OTC unreachable or unhealthy (a 2xx it cannot mean)
                verdict = True
            elif exc.status != 429:
                self.breaker.success()  # OTC answered (404, 409, 4xx): it is healthy
                verdict = True
            raise
        finally:
            if not verdict:
                self.breaker.release_probe()

    async def _send[T](self, request: _Request, token: str, parse: Callable[[bytes], T]) -> T:
        method, path = request.method, request.path
        headers = {"Authorization": f"Bearer {token}", "Accept": JSON}
        data: bytes | None = None
        if request.payload is not None:
            data = json.dumps(request.payload).encode()
            headers["Content-Type"] = request.content_type
        self.calls += 1
        try:
            answer = await self._exchange(method, path, params=request.params, data=data, headers=headers)
        except aiohttp.ClientConnectorError as exc:
            # Never reached the server: safe to retry any method.
            raise OtcRetryableError(
                f"cannot connect: {type(exc).__name__}", method=method, path=path
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            cls = OtcRetryableError if request.idempotent else OtcAmbiguousError
            raise cls(
                f"no answer ({type(exc).__name__}); the request may have been applied",
                method=method,
                path=path,
            ) from None
        if 200 <= answer.status < 300:
            return _parsed(request, answer, parse)
        if answer.status == 401:
            raise _Unauthorized(token, answer.trace)
        raise self._failure(request, answer, _json_or_none(answer.raw))

    async def _exchange(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None,
        data: bytes | None,
        headers: dict[str, str],
    ) -> _Answer:
        """One HTTP request within the total timeout, its body read up to ``max_body_bytes``."""
        async with self._session.request(
            method,
            self._base + path,
            params=params,
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
        ) as resp:
            raw, whole = await read_bounded(resp, self.config.max_body_bytes)
            return _Answer(
                status=resp.status,
                trace=resp.headers.get(TRANSACTION_HEADER),
                retry_after=resp.headers.get("Retry-After"),
                raw=raw,
                whole=whole,
            )

    def _failure(self, request: _Request, answer: _Answer, body: Any) -> OtcError:
        """The error of a non-2xx answer other than 401 (a 429 also holds every call off)."""
        status, method, path = answer.status, request.method, request.path
        message, code = ibm_message(body)
        message = message or f"HTTP {status}"
        if status == 429:
            self.rate_limited += 1
            wait = self._hold_off(answer.retry_after)
            log.warning("OTC rate limit: not calling for %.1fs", wait, extra={"path": path})
        err = classify(
            status,
            message,
            code=code,
            transaction_id=answer.trace,
            method=method,
            path=path,
            write=request.write,
        )
        if not request.idempotent and status >= 500:
            return OtcAmbiguousError(
                err.message, status=status, code=code, transaction_id=answer.trace, method=method, path=path
            )
        return err

    def _hold_off(self, retry_after: str | None) -> float:
        """Push the Retry-After gate that every call waits for (clamped); returns the wait."""
        cfg = self.config
        wait = parse_retry_after(retry_after, default=cfg.default_retry_after_s)
        if wait > cfg.retry_after_max_s:
            log.warning(
                "OTC asked to wait %r; holding for %.0fs (OTC_RETRY_AFTER_MAX_S)",
                retry_after,
                cfg.retry_after_max_s,
            )
            wait = cfg.retry_after_max_s
        self.gate.push(wait)
        return wait

    def holding_until(self) -> datetime | None:
        """Until when every call waits for OTC's rate limit (a 429's ``Retry-After``), if it does."""
        left = self.gate.not_before - self._clock()
        return datetime.now(UTC) + timedelta(seconds=left) if left > 0 else None

    def readiness(self) -> tuple[bool, str]:
        """Not ready while the circuit is open or while holding for OTC's rate limit (and until when)."""
        until = self.holding_until()
        if until is not None:
            return False, f"holding for OTC's rate limit until {until:%Y-%m-%dT%H:%M:%SZ}"
        state = self.breaker.state
        return state != "open", state


@dataclass(frozen=True)
class _Request:
    """One logical call, as its attempts send it."""

    method: str
    path: str
    payload: dict[str, Any] | None
    params: dict[str, str] | None
    content_type: str
    idempotent: bool
    write: bool
    """A tool write: its permanent answer is a refusal of its content (``OtcRefusedError``)."""


@dataclass(frozen=True)
class _Answer:
    status: int
    trace: str | None
    """OTC's transaction id (``TRANSACTION_HEADER``)."""
    retry_after: str | None
    raw: bytes
    whole: bool = True
    """False: the body was longer than the cap and ``raw`` is its beginning only."""


def _parsed[T](request: _Request, answer: _Answer, parse: Callable[[bytes], T]) -> T:
    """A 2xx body as ``parse`` reads it, else a malformed answer (ambiguous for a POST: it may
    have been applied, so :meth:`OtcClient.create_tool` looks the name up before it posts again)."""
    where: dict[str, Any] = {"status": answer.status, "transaction_id": answer.trace}
    where |= {"method": request.method, "path": request.path}
    if not answer.whole:
        what = "a body over the size cap (OTC_MAX_BODY_BYTES)"
        err: OtcRetryableError = OtcTooLargeError(what, **where)
    else:
        try:
            return parse(answer.raw)
        except ValueError as exc:  # pydantic's ValidationError included (cut-off JSON, wrong shape)
            what = f"a body that is not the documented answer ({_why(exc)})"
            err = OtcMalformedError(what, **where)
    if not request.idempotent:
        raise OtcAmbiguousError(f"{what}; the request may have been applied", **where)
    raise err


def _why(exc: ValueError) -> str:
    """Where and what, never the body itself (a tool's parameters may hold secrets)."""
    if not isinstance(exc, ValidationError):
        return type(exc).__name__
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:3])


def _lied(exc: OtcError) -> bool:
    """A 2xx OTC cannot have meant: a failure of OTC's, for the breaker like a 5xx."""
    return isinstance(exc, OtcMalformedError)


def _json_or_none(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


class _Unauthorized(Exception):
    def __init__(self, token: str, transaction_id: str | None) -> None:
        super().__init__("401")
        self.token = token
        self.transaction_id = transaction_id
