"""Where a change's cluster-to-OTC latency goes: the e2e figure split at the points we can observe
from outside the services, all on this machine's wall clock.

- ``watcher``: from the PATCH's answer (kube emulator) to the trigger event's ``time`` (the watcher
  built the event: its watch delivery, debounce-free reconcile of the namespace, derivation);
- ``publish``: from the event's ``time`` to its arrival at a tap queue bound beside otc-writer's
  (the watcher's pending record and the publish with its confirm, RabbitMQ's routing);
- ``writer``: from that arrival to OTC receiving the tool's PATCH (otc-writer's delivery, decode,
  projection write, lease and intent);
- ``otc``: the PATCH as the OTC emulator timed it;
- ``observe``: the rest, until the bench's poll saw the new content (poll interval, GET).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

SLACK_S = 0.02
"""Clock reads of different processes on one machine: an arrival a little before the answer was
read (the bench's loop was busy) still belongs to the change."""
STAGES = ("watcher", "publish", "writer", "otc", "observe")


@dataclass(frozen=True)
class Change:
    namespace: str
    trigger: str
    tool_id: str
    answered: float
    """Wall clock when the bench had the PATCH's answer."""
    seconds: float
    """From then until the bench saw the tool's new content."""


@dataclass(frozen=True)
class Arrival:
    namespace: str
    trigger: str
    built: float
    """The event's ``time``."""
    arrived: float


@dataclass(frozen=True)
class OtcWrite:
    tool_id: str
    at: float
    seconds: float


def split(change: Change, arrivals: list[Arrival], writes: list[OtcWrite]) -> dict[str, float] | None:
    """The change's stages in seconds; None when its event or its OTC write was not seen."""
    arrival = min(
        (
            a
            for a in arrivals
            if (a.namespace, a.trigger) == (change.namespace, change.trigger)
            and a.arrived >= change.answered - SLACK_S
        ),
        key=lambda a: a.arrived,
        default=None,
    )
    if arrival is None:
        return None
    write = min(
        (w for w in writes if w.tool_id == change.tool_id and w.at >= arrival.arrived - SLACK_S),
        key=lambda w: w.at,
        default=None,
    )
    if write is None:
        return None
    done = change.answered + change.seconds
    return {
        "watcher": arrival.built - change.answered,
        "publish": arrival.arrived - arrival.built,
        "writer": write.at - arrival.arrived,
        "otc": write.seconds,
        "observe": done - (write.at + write.seconds),
    }


def summary(splits: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per stage: median and 99th percentile in ms."""
    out: dict[str, dict[str, float]] = {}
    for stage in STAGES:
        values = sorted(s[stage] for s in splits)
        if values:
            p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
            out[stage] = {"p50": round(statistics.median(values) * 1000, 1), "p99": round(p99 * 1000, 1)}
    return out
