"""What became of each tool, told to broker-api (``otc.outcome.tool``) for the services' pages.

A :class:`ReportingApplier` is the :class:`~services.otc_writer.applier.ToolApplier` plus one well
defined point: after an apply or a remove ended (the ledger committed, recorded the refusal, or
recorded the OTC error), it publishes one small :class:`~shared.events.ToolOutcomeData`. A tool
skipped as stale, unchanged or refused before is not reported again: nothing changed.

Best effort: a publish that fails is logged and counted, never fails the message (the tool write
is done; failing would only repeat it). The tool's next outcome corrects the page; broker-api keeps
the newest per tool by (revision, time), so a replay changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter

from services.otc_writer.applier import Outcome, ToolApplier, ToolRefused
from services.otc_writer.desired import DesiredTool
from services.otc_writer.ledger import Ledger
from services.otc_writer.otc_client import (
    OtcClient,
    OtcError,
    OtcPermanentError,
    OtcRefusedError,
    OtcUnavailableError,
)
from shared.amqp.publisher import Publisher
from shared.events import MAX_OUTCOME_MESSAGE, CloudEvent, RoutingKeys, ToolChange, ToolOutcomeData, ToolState

log = logging.getLogger(__name__)

Publish = Callable[[CloudEvent], Awaitable[None]]
Clock = Callable[[], datetime]
SOURCE = "/otc-writer"
_APPLIED: dict[Outcome, ToolChange] = {
    Outcome.CREATED: "created",
    Outcome.UPDATED: "updated",
    Outcome.ADOPTED: "adopted",
}
_REMOVED: dict[Outcome, ToolChange] = {Outcome.DELETED: "deleted", Outcome.ABSENT: "absent"}
LINK_PARAMETERS = ("repo_url", "dashboard_url")
"""Tool parameters whose http(s) value is the tool's link on the page, first found wins."""


def link_of(parameters: dict[str, Any]) -> str | None:
    for name in LINK_PARAMETERS:
        value = parameters.get(name)
        if isinstance(value, str) and urlsplit(value).scheme in ("http", "https") and urlsplit(value).netloc:
            return value
    return None


def held_until(client: OtcClient, now: Clock, monotonic: Callable[[], float]) -> datetime | None:
    """When the client calls OTC again: the open circuit's half-open probe or a 429's Retry-After."""
    wait = max(client.breaker.retry_in(), client.gate.not_before - monotonic())
    return now() + timedelta(seconds=wait) if wait > 0 else None


class Reporter:
    """Builds and publishes the outcome events."""

    def __init__(
        self,
        publish: Publish,
        registry: CollectorRegistry,
        *,
        until: Callable[[], datetime | None],
        clock: Clock,
        online: Callable[[], bool] = lambda: True,
    ) -> None:
        self._publish = publish
        self._online = online
        self._until = until
        self._clock = clock
        self.failures = Counter(
            "kotc_tool_outcome_publish_failures_total",
            "Tool outcome events not published (the services' pages wait for the tool's next outcome)",
            registry=registry,
        )

    async def report(self, outcome: ToolOutcomeData) -> None:
        event = CloudEvent.for_data(RoutingKeys.TOOL_OUTCOME, outcome, source=SOURCE, subject=outcome.id)
        if not self._online():  # RabbitMQ is away: do not hold the tool's message for a page
            self.failures.inc()
            log.info("tool outcome not published: RabbitMQ unavailable", extra={"ledger_id": outcome.id})
            return
        try:
            await self._publish(event)
        except Exception as exc:  # best effort, see the module docstring
            self.failures.inc()
            log.warning("tool outcome not published", extra={"ledger_id": outcome.id, "error": repr(exc)})

    def of_error(self, exc: OtcError, cause: str | None) -> dict[str, Any]:
        """State, message, until and dead letter of an attempt that ended with ``exc``."""
        message = str(exc)[:MAX_OUTCOME_MESSAGE]
        state: ToolState
        if isinstance(exc, OtcRefusedError):
            state = "refused"
        elif isinstance(exc, OtcPermanentError):
            state = "failed"
        elif isinstance(exc, OtcUnavailableError):
            return {"state": "held", "message": message, "until": self._until()}
        else:
            return {"state": "pending", "message": message}
        return {"state": state, "message": message, "dead_letter": cause}

    def now(self) -> datetime:
        return self._clock()


class ReportingApplier(ToolApplier):
    """The applier that reports every tool outcome (the only place otc-writer publishes them)."""

    def __init__(
        self, ledger: Ledger, client: OtcClient, *, owner: str, reporter: Reporter, **kw: Any
    ) -> None:
        super().__init__(ledger, client, owner=owner, **kw)
        self._reporter = reporter

    async def apply(self, want: DesiredTool, *, cause: str | None = None) -> Outcome:
        base = {
            "purpose": want.purpose,
            "key": want.key,
            "toolchain_id": want.toolchain_id,
            "scope": want.scope,
            "name": want.name,
            "revision": want.revision,
            "link": link_of(want.parameters),
        }
        try:
            outcome = await super().apply(want, cause=cause)
        except ToolRefused:
            raise  # reported when it was refused
        except OtcError as exc:
            await self._send(base, self._reporter.of_error(exc, cause))
            raise
        if outcome in _APPLIED:
            await self._send(base, {"state": "applied", "change": _APPLIED[outcome]})
        return outcome

    async def remove(
        self,
        purpose: str,
        key: str,
        toolchain_id: str,
        *,
        revision: int,
        name: str | None = None,
        create: bool = True,
    ) -> Outcome:
        base = {
            "purpose": purpose,
            "key": key,
            "toolchain_id": toolchain_id,
            "name": name,
            "revision": revision,
        }
        try:
            outcome = await super().remove(
                purpose, key, toolchain_id, revision=revision, name=name, create=create
            )
        except OtcError as exc:
            await self._send(base, self._reporter.of_error(exc, None))
            raise
        if outcome in _REMOVED:
            await self._send(base, {"state": "removed", "change": _REMOVED[outcome]})
        return outcome

    async def _send(self, base: dict[str, Any], state: dict[str, Any]) -> None:
        await self._reporter.report(ToolOutcomeData(**base, **state, at=self._reporter.now()))


def tool_reporter(
    publisher: Publisher, registry: CollectorRegistry, client: OtcClient, monotonic: Callable[[], float]
) -> Reporter:
    """The reporter of a running otc-writer: its publisher, its OTC client's hold-off."""

    def now() -> datetime:
        return datetime.now(UTC)

    return Reporter(
        publisher.publish,
        registry,
        until=lambda: held_until(client, now, monotonic),
        clock=now,
        online=lambda: publisher.ready,
    )
