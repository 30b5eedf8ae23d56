"""Desired tools: what one trigger (or one command) must look like in one toolchain.

Trigger tool names are deterministic, safe to display and valid for OTC (≤128 characters however
counted, charset ``^([^\\x00-\\x7F]|[a-zA-Z0-9-._ ])+$``): ``kabanero-trigger <namespace> <owner>
<name> <hash8>``, made safe and shortened by ``shared.otc_tools.fit_tool_name``. The 8-hex suffix
(sha256 of the trigger's full key, cluster and generation included) keeps names unique per toolchain
even when sanitizing or truncating merges two triggers or two clusters share a namespace name;
determinism is what lets an ambiguous create be resolved by looking the name up.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from shared.events import InstanceRef, TriggerData, TriggerKey
from shared.otc_tools import (
    TOOL_NAME_MAX,
    TOOL_NAME_RE,
    display_safe,
    fit_tool_name,
    sanitize_tool_name,
    tool_content_hash,
    tool_name_fits,
)
from shared.urls import scrub_urls

NAME_MAX = TOOL_NAME_MAX
NAME_RE = TOOL_NAME_RE
TRIGGER_PURPOSE = "trigger"


@dataclass(frozen=True)
class DesiredTool:
    purpose: str
    key: str
    toolchain_id: str
    tool_type_id: str
    name: str
    parameters: dict[str, Any] = field(hash=False)
    revision: int
    scope: str | None = None
    """The instance (``cluster/namespace``) a trigger tool belongs to, for per-instance reconcile."""

    @functools.cached_property
    def hash(self) -> str:
        """Computed once (canonical JSON + sha256, ~20 us): an apply compares and commits it up to
        three times. The tool is frozen and its parameters are never changed after it is built."""
        return tool_content_hash(self.tool_type_id, self.name, self.parameters)


def instance_scope(instance: InstanceRef) -> str:
    return instance.scope


def hashed_tool_name(text: str, key_id: str, fallback: str) -> str:
    """``<text> <hash8>``, safe to display and within OTC's limits; the suffix (sha256 of the item's
    full key) keeps names unique per toolchain when sanitizing or shortening merges two items."""
    suffix = hashlib.sha256(key_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    name = fit_tool_name(sanitize_tool_name(text).strip() or fallback, suffix)
    assert NAME_RE.match(name) and tool_name_fits(name)
    return name


def trigger_tool_name(key: TriggerKey) -> str:
    return hashed_tool_name(
        f"kabanero-trigger {key.namespace} {key.owner} {key.name}", key.id, "kabanero-trigger"
    )


@dataclass(frozen=True)
class TriggerToolStyle:
    tool_type_id: str = "customtool"
    lifecycle_phase: str = "DELIVER"
    dashboard_url: str = (
        "https://kabanero.local/clusters/{cluster}/namespaces/{namespace}/triggers/{owner}/{name}"
    )


def trigger_parameters(trigger: TriggerData, name: str, style: TriggerToolStyle) -> dict[str, Any]:
    """``customtool`` parameters (docs/reference/otc-api.md §8), derived from the trigger's content alone.

    URLs are cleaned again (no userinfo, query or fragment): the watcher strips them at the source,
    this keeps a trigger stored or published by an older watcher from carrying them into OTC."""
    key = trigger.key
    dashboard = style.dashboard_url.format(
        cluster=quote(key.cluster, safe=""),
        namespace=quote(key.namespace, safe=""),
        generation=quote(key.generation, safe=""),
        owner=quote(key.owner, safe=""),
        name=quote(key.name, safe=""),
    )
    kind = "mediation" if key.generation == "mediation" else "Kabanero CR trigger"
    extra = {
        "cluster": key.cluster,
        "namespace": key.namespace,
        "generation": key.generation,
        "owner": key.owner,
        "trigger": key.name,
        "version": trigger.version,
        "content_hash": trigger.content_hash,
        "url": scrub_urls(trigger.url) if trigger.url else trigger.url,
        "destinations": sorted({scrub_urls(d) for d in trigger.destinations}),
        "repositories": sorted({scrub_urls(r.url) for r in trigger.repositories}),
    }
    return {
        "type": "Kabanero Event Trigger",
        "lifecyclePhase": style.lifecycle_phase,
        "name": name,
        "dashboard_url": dashboard,
        "description": display_safe(
            f"Kabanero event trigger ({kind}) {key.owner}/{key.name} in {key.cluster}/{key.namespace}. "
            "Read-only mirror: the trigger is managed by gitops in the cluster."
        )[:500],
        "additional-properties": json.dumps(extra, sort_keys=True, separators=(",", ":")),
    }


def desired_trigger_tool(trigger: TriggerData, toolchain_id: str, style: TriggerToolStyle) -> DesiredTool:
    name = trigger_tool_name(trigger.key)
    return DesiredTool(
        purpose=TRIGGER_PURPOSE,
        key=trigger.key.id,
        toolchain_id=toolchain_id,
        tool_type_id=style.tool_type_id,
        name=name,
        parameters=trigger_parameters(trigger, name, style),
        revision=trigger.revision,
        scope=instance_scope(trigger.instance),
    )
