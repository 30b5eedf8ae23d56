"""Desired Tekton cards: what one Pipeline or EventListener card must look like in one toolchain.

A card is a read-only ``customtool`` (docs/design.md, *Tekton cards*: the Tekton broker). Its
parameters derive only from what the card shows, so a change of the card's source that shows nothing
new (status, ``resourceVersion``, the watcher's ``content_hash``) costs no OTC write.

Names follow the trigger tools' rule (``desired.hashed_tool_name``): ``tekton pipeline <namespace>
<name> <hash8>`` or ``tekton eventlistener ...``, safe to display and within OTC's 128 however counted;
the 8-hex suffix (sha256 of the card's key, cluster included) keeps them unique per toolchain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from services.otc_writer.desired import DesiredTool, hashed_tool_name
from shared.events import TektonCardData, TektonCardKey

TEKTON_PURPOSE = "tekton"
DESCRIPTION_MAX = 500
"""OTC's bound on a description (otc-api.md §4, Toolchain ``description``), kept for cards too."""
CARD_TYPES = {"Pipeline": "Tekton Pipeline", "EventListener": "Tekton EventListener"}


@dataclass(frozen=True)
class TektonCardStyle:
    tool_type_id: str = "customtool"
    lifecycle_phase: str = "DELIVER"
    service_page_url: str = "https://kabanero.local/tekton/clusters/{cluster}"
    """The last ``dashboard_url`` fallback (no Dashboard link, no external URL); field ``cluster``."""


def card_tool_name(key: TektonCardKey) -> str:
    prefix = f"tekton {key.kind.lower()}"
    return hashed_tool_name(f"{prefix} {key.namespace} {key.name}", key.id, prefix)


def card_dashboard_url(card: TektonCardData, style: TektonCardStyle) -> str:
    """The Tekton Dashboard deep link, else the EventListener's external URL, else the service page."""
    return (
        card.dashboard_url
        or card.external_url
        or style.service_page_url.format(cluster=quote(card.key.cluster, safe=""))
    )


def card_description(card: TektonCardData) -> str:
    """What a user needs, within ``DESCRIPTION_MAX``: the object, the versions, then per kind the
    tasks and owning Stack (Pipeline) or the external URL and triggers (EventListener)."""
    key = card.key
    head = [f"{CARD_TYPES[key.kind]} {key.cluster}/{key.namespace}/{key.name}."]
    versions = [
        f"{what} {version}"
        for what, version in (("Pipelines", card.pipelines_version), ("Triggers", card.triggers_version))
        if version
    ]
    if versions:
        head.append(f"Tekton {', '.join(versions)}.")
    if key.kind == "Pipeline":
        if card.stack:
            head.append(f"Owned by Kabanero Stack {card.stack}.")
        listed = ("Tasks", card.tasks)
    else:
        if card.external_url:
            head.append(f"External URL: {card.external_url}.")
        listed = ("Triggers", card.triggers)
    tail = "Read-only mirror: managed in the cluster."
    return _bounded(" ".join(head), listed, tail)


def _bounded(head: str, listed: tuple[str, list[str]], tail: str) -> str:
    """``head``, as many list items as fit (then ``+N more``), ``tail``; cut hard if still too long."""
    label, items = listed
    for shown in range(len(items), -1, -1):
        rest = len(items) - shown
        more = f" (+{rest} more)" if rest else ""
        part = f" {label}: {', '.join(items[:shown])}{more}." if items else ""
        text = f"{head}{part} {tail}"
        if len(text) <= DESCRIPTION_MAX:
            return text
    return (head + " " + tail)[: DESCRIPTION_MAX - 3] + "..."


def card_parameters(card: TektonCardData, style: TektonCardStyle) -> dict[str, Any]:
    """``customtool`` parameters (otc-api.md §4.7): the object named ``<cluster>/<namespace>/<name>``."""
    key = card.key
    extra = {
        "cluster": key.cluster,
        "namespace": key.namespace,
        "kind": key.kind,
        "object": key.name,
        "api_version": card.api_version,
        "pipelines_version": card.pipelines_version,
        "triggers_version": card.triggers_version,
        "tasks": card.tasks,
        "stack": card.stack,
        "external_url": card.external_url,
        "triggers": card.triggers,
    }
    return {
        "type": CARD_TYPES[key.kind],
        "lifecyclePhase": style.lifecycle_phase,
        "name": f"{key.cluster}/{key.namespace}/{key.name}",
        "dashboard_url": card_dashboard_url(card, style),
        "description": card_description(card),
        "additional-properties": json.dumps(extra, sort_keys=True, separators=(",", ":")),
    }


def desired_card_tool(card: TektonCardData, toolchain_id: str, style: TektonCardStyle) -> DesiredTool:
    return DesiredTool(
        purpose=TEKTON_PURPOSE,
        key=card.key.id,
        toolchain_id=toolchain_id,
        tool_type_id=style.tool_type_id,
        name=card_tool_name(card.key),
        parameters=card_parameters(card, style),
        revision=card.revision,
        scope=card.scope,
    )
