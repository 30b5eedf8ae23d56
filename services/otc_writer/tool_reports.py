"""What became of each tool, told to broker-api (``otc.outcome.tool``) for the services' pages.

A :class:`ReportingApplier` is the :class:`~services.otc_writer.applier.ToolApplier` plus one well
defined point: after an apply or a remove ended (the ledger committed, recorded the refusal, or
recorded the OTC error), it publishes one small :class:`~shared.events.ToolOutcomeData`. A tool
skipped as stale, unchanged or refused before is not reported again: nothing changed.

Best effort: the event goes to the :class:`~services.otc_writer.outcome_outbox.Outbox`, which
publishes it in the background: the tool's message never waits for the outcome's confirm. One not
published (outbox full, RabbitMQ away, publish failed, shutdown) is logged and counted, never fails
the message (the tool write is done; failing would only repeat it). The tool's next outcome corrects
the page; broker-api keeps the newest per tool by (revision, time), so a replay changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

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
from services.otc_writer.outcome_outbox import Outbox
from shared.amqp.publisher import Publisher
from shared.events import MAX_OUTCOME_MESSAGE, CloudEvent, RoutingKeys, ToolChange, ToolOutcomeData, ToolState

log = logging.getLogger(__name__)

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
    """Builds the outcome events and hands them to the outbox."""

    def __init__(self, outbox: Outbox, *, until: Callable[[], datetime | None], clock: Clock) -> None:
        self.outbox = outbox
        self._until = until
        self._clock = clock

    def report(self, outcome: ToolOutcomeData) -> None:
        """Never waits: the outbox publishes (or drops and counts) it, see the module docstring."""
        self.outbox.put(
            CloudEvent.for_data(RoutingKeys.TOOL_OUTCOME, outcome, source=SOURCE, subject=outcome.id)
        )

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
            self._send(base, self._reporter.of_error(exc, cause))
            raise
        if outcome in _APPLIED:
            self._send(base, {"state": "applied", "change": _APPLIED[outcome]})
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
            self._send(base, self._reporter.of_error(exc, None))
            raise
        if outcome in _REMOVED:
            self._send(base, {"state": "removed", "change": _REMOVED[outcome]})
        return outcome

    def _send(self, base: dict[str, Any], state: dict[str, Any]) -> None:
        self._reporter.report(ToolOutcomeData(**base, **state, at=self._reporter.now()))


def tool_reporter(
    publisher: Publisher, registry: CollectorRegistry, client: OtcClient, monotonic: Callable[[], float]
) -> Reporter:
    """The reporter of a running otc-writer: its publisher, its OTC client's hold-off."""

    def now() -> datetime:
        return datetime.now(UTC)

    return Reporter(
        Outbox(publisher.publish, registry, online=lambda: publisher.ready),
        until=lambda: held_until(client, now, monotonic),
        clock=now,
    )
