"""broker-api's memory of what it last wrote (services/broker_api/recent.py): a hint for the
one-round-trip commit, and the sweeper's list of confirmed entries to pull."""

from __future__ import annotations

from datetime import UTC, datetime

from services.broker_api.models import InstanceRecord, OutboxEntry, Parameters
from services.broker_api.recent import Known, Recent

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _known(sid: str, *ids: str, token: str | None = "t") -> Known:
    record = InstanceRecord(
        key=f"kabanero:{sid}",
        kind="kabanero",
        instance_id=sid,
        service_id="kabanero",
        parameters=Parameters(cluster="c", namespace="n"),
        dashboard_url="https://d",
        created_at=NOW,
        updated_at=NOW,
        revision=len(ids),
    )
    outbox = tuple(OutboxEntry(id=i, revision=n, routing_key="r", event={}) for n, i in enumerate(ids, 1))
    return Known(record, outbox, token)


def test_confirmed_entries_leave_what_the_next_write_keeps() -> None:
    recent = Recent()
    recent.put("k", _known("k", "e1", "e2"))
    assert recent.published("k", frozenset({"e1"}))
    known = recent.current("k")
    assert known is not None and [e.id for e in known.kept] == ["e2"]
    recent.released("k", exact=True)
    known = recent.current("k")
    assert known is not None and known.token is None and [e.id for e in known.outbox] == ["e2"]


def test_nothing_is_marked_published_without_a_lease_held() -> None:
    recent = Recent()
    recent.put("k", _known("k", "e1", token=None))
    assert not recent.published("k", frozenset({"e1"}))
    assert not recent.published("unknown", frozenset({"e1"}))


def test_a_forgotten_record_is_no_base_but_its_confirmed_entries_stay_for_the_sweeper() -> None:
    recent = Recent()
    recent.put("a", _known("a", "e1"))
    recent.published("a", frozenset({"e1"}))
    recent.forget("a")
    assert recent.current("a") is None
    stale = recent.get("a")
    assert stale is not None and stale.stale and stale.published == {"e1"}
    recent.released("a", exact=True)  # a stale one is dropped, not kept as a base
    assert recent.get("a") is None
    recent.put("b", _known("b", "e1"))
    recent.forget("b")  # nothing to pull: gone at once
    assert recent.get("b") is None


def test_the_oldest_are_dropped_but_never_one_awaiting_its_pull() -> None:
    recent = Recent(size=2)
    recent.put("a", _known("a", "e1"))
    recent.published("a", frozenset({"e1"}))
    recent.put("b", _known("b", "e1"))
    recent.put("c", _known("c", "e1"))
    assert recent.get("a") is not None  # awaiting its pull
    assert recent.get("b") is None and recent.get("c") is not None
