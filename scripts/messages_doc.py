"""Generate ``docs/messages.md``: every routing key with its CloudEvent type, producer, consumers,
JSON Schema (from the pydantic models in :mod:`shared.events`) and an example.

``python -m scripts.messages_doc`` rewrites the file; ``--check`` exits 1 when it is out of date
(``tests/unit/test_messages_doc.py`` runs the check, so a model change without the doc fails CI).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from shared.amqp.topology import DEAD_EXCHANGE, EXCHANGE, QUEUES, owned_instances_queue
from shared.events import (
    CONTENT_TYPE,
    TYPE_PREFIX,
    CloudEvent,
    CommandOutcomeData,
    InstanceData,
    InstanceRef,
    Repository,
    ResyncReply,
    ResyncRequest,
    ServiceEventData,
    ServiceParameters,
    SnapshotData,
    TektonCardData,
    TektonCardKey,
    TektonInstallationData,
    TektonSnapshotData,
    ToolCommand,
    ToolOutcomeData,
    TriggerData,
    TriggerKey,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "messages.md"
WHEN = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SERVICE_EVENTS = ("provisioned", "updated", "bound", "unbound", "deprovisioned")

REF = InstanceRef(cluster="default", namespace="kabanero", name="kabanero")
KEY = TriggerKey(
    cluster="default", namespace="kabanero", generation="mediation", owner="webhook", name="build"
)
REPO = Repository.of("https://github.com/example/app", "trigger", ref="main", source="spec.mediations")
TRIGGER = TriggerData(
    key=KEY,
    instance=REF,
    content={"name": "build", "selector": {"urlPattern": "build"}},
    content_hash="5f0c2b7e",
    version="5f0c2b7e",
    repositories=[REPO],
    destinations=["https://listener.example/build"],
    revision=3,
)
SERVICE = ServiceEventData(
    kind="kabanero-events",
    instance_id="3f1d2c4e-events",
    service_id="kabanero-events",
    parameters=ServiceParameters(cluster="default", namespace="kabanero", label="default/kabanero"),
    toolchains=["9b7e5a10-toolchain"],
    toolchain_id="9b7e5a10-toolchain",
    revision=2,
)
CARD = TektonCardData(
    key=TektonCardKey(cluster="default", namespace="kabanero", kind="Pipeline", name="java-build-deploy-pl"),
    api_version="tekton.dev/v1beta1",
    pipelines_version="v0.11.3",
    triggers_version="v0.4.0",
    dashboard_url="https://tekton-dashboard.apps.example/#/namespaces/kabanero/pipelineruns"
    "?labelSelector=tekton.dev%2Fpipeline%3Djava-build-deploy-pl",
    tasks=["build-push", "deploy"],
    stack="java-microprofile",
    content_hash="9c1e77a0",
    revision=2,
)


def _tekton_model(key: str) -> tuple[type[BaseModel], BaseModel, str, str]:
    example: BaseModel
    if key.startswith("tekton.card."):
        example = CARD.model_copy(update={"deleted": key.endswith("deleted")})
        return (
            TektonCardData,
            example,
            "kabanero-watcher",
            "one Tekton Pipeline or EventListener card appeared, changed or went",
        )
    if key == "tekton.snapshot":
        example = TektonSnapshotData(
            cluster="default", namespace="kabanero", cards=[CARD], revision=5, card_revisions={CARD.key.id: 2}
        )
        return TektonSnapshotData, example, "kabanero-watcher", "every Tekton card of one namespace"
    example = TektonInstallationData(
        cluster="default",
        found=True,
        reason="OpenShift Pipelines Config 'cluster' (installed)",
        pipelines_version="v0.11.3",
        triggers_version="v0.4.0",
        controller_namespace="openshift-pipelines",
        detected_by="config.operator.tekton.dev/cluster",
        dashboard_url="https://tekton-dashboard.apps.example",
        pipelines_api="tekton.dev/v1beta1",
        eventlisteners_api="triggers.tekton.dev/v1alpha1",
        cards={"kabanero": 5},
        content_hash="2b7d10f3",
        revision=3,
    )
    return (
        TektonInstallationData,
        example,
        "kabanero-watcher",
        "the cluster's Tekton installation (or why none)",
    )


def _model(key: str) -> tuple[type[BaseModel], BaseModel, str, str]:
    """(data model, example, producer, what it means) of a routing key."""
    example: BaseModel
    if key.startswith("tekton."):
        return _tekton_model(key)
    if key.startswith("service."):
        kind = key.split(".")[1]
        what = key.rsplit(".", 1)[1]
        update: dict[str, Any] = {"kind": kind, "service_id": kind, "deleted": what == "deprovisioned"}
        if kind == "tekton":
            update["parameters"] = ServiceParameters(
                cluster="default", namespaces=["kabanero"], label="default"
            )
        example = SERVICE.model_copy(update=update)
        return (
            ServiceEventData,
            example,
            "broker-api",
            f"OTC {what} a {kind} service (committed record change)",
        )
    if key.startswith("kabanero.instance."):
        example = InstanceData(
            instance=REF,
            uid="0d6c...",
            version="0.9.2",
            repositories=[REPO],
            content_hash="a1b2c3d4",
            revision=4,
            deleted=key.endswith("deleted"),
        )
        return (
            InstanceData,
            example,
            "kabanero-watcher",
            "a Kabanero instance's version or repositories changed",
        )
    if key.startswith("kabanero.trigger."):
        example = TRIGGER.model_copy(update={"deleted": key.endswith("deleted")})
        return TriggerData, example, "kabanero-watcher", "one event trigger appeared, changed or went"
    if key == "kabanero.snapshot":
        example = SnapshotData(
            instance=REF,
            exists=True,
            version="0.9.2",
            repositories=[REPO],
            triggers=[TRIGGER],
            revision=7,
            instance_revision=4,
            trigger_revisions={KEY.id: 3},
        )
        return SnapshotData, example, "kabanero-watcher", "the whole published state of one instance"
    if key == "kabanero.command.outcome":
        example = CommandOutcomeData(
            instance_id="5a2e9c7d-kabanero",
            cluster="default",
            namespace="team-a",
            name="kabanero",
            revision=1,
            outcome="created",
            message="Kabanero team-a/kabanero created for service 5a2e9c7d-kabanero",
            at=WHEN,
        )
        return (
            CommandOutcomeData,
            example,
            "kabanero-watcher (the leader of `cluster`)",
            "what the watcher did with the CR of a service that creates its instance, for its dashboard",
        )
    if key.startswith("otc.tool."):
        example = ToolCommand(
            purpose="github",
            key="default/kabanero|https://github.com/example/app",
            toolchain_id="9b7e5a10-toolchain",
            tool_type_id="githubconsolidated",
            name="kabanero default/kabanero example/app",
            revision=1,
            parameters={"repo_url": "https://github.com/example/app", "type": "link"},
        )
        return (
            ToolCommand,
            example,
            "github-linker; broker-api (purpose `kabanero-events-auto`: the Events tool of an events=auto service)",
            "make one tool exist with this content, or not exist",
        )
    if key == "otc.outcome.tool":
        example = ToolOutcomeData(
            purpose="kabanero-trigger",
            key="default/team-a/mediation/webhook/appsody",
            toolchain_id="9b7e5a10-toolchain",
            scope="default/team-a",
            name="kabanero trigger default/team-a appsody",
            state="refused",
            revision=3,
            message="POST /toolchains/9b7e5a10-toolchain/tools: 400: Invalid parameters [bad_request]",
            dead_letter="kabanero.trigger:default/team-a/mediation/webhook/appsody:3",
            at=WHEN,
        )
        return (
            ToolOutcomeData,
            example,
            "otc-writer",
            "what became of one tool (applied, pending, held, refused...), for the services' pages",
        )
    if key == "control.resync":
        return ResyncRequest, ResyncRequest(cluster="default"), "kabanero-otc CLI", "ask for fresh snapshots"
    raise KeyError(key)


def routing_keys() -> list[str]:
    keys = [f"service.{k}.{e}" for k in ("kabanero", "kabanero-events", "tekton") for e in SERVICE_EVENTS]
    keys += ["kabanero.instance.changed", "kabanero.instance.deleted"]
    keys += [f"kabanero.trigger.{e}" for e in ("created", "updated", "deleted")]
    keys += ["kabanero.snapshot", "kabanero.command.outcome"]
    keys += ["tekton.installation.changed", *(f"tekton.card.{e}" for e in ("created", "updated", "deleted"))]
    keys += ["tekton.snapshot"]
    return [*keys, "otc.tool.apply", "otc.tool.remove", "otc.outcome.tool", "control.resync"]


def consumers(key: str) -> list[str]:
    queues = [q for q, patterns in QUEUES.items() if any(matches(key, p) for p in patterns)]
    if key == "control.resync":
        queues.append("one exclusive queue per kabanero-watcher replica")
    if key.startswith("service.kabanero."):
        queues.append(f"{owned_instances_queue('<cluster>')} (one per allowed cluster; its watcher's leader)")
    return queues


def matches(key: str, pattern: str) -> bool:
    """AMQP topic match for the patterns we use (``*`` = one word)."""
    words, parts = key.split("."), pattern.split(".")
    return len(words) == len(parts) and all(
        p == "*" or fnmatch.fnmatchcase(w, p) for w, p in zip(words, parts, strict=True)
    )


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


def render() -> str:
    out = [
        "# Messages",
        "",
        "<!-- Generated by `python -m scripts.messages_doc` from shared/events.py and shared/amqp/topology.py;",
        "     tests/unit/test_messages_doc.py fails when this file is out of date. Do not edit by hand. -->",
        "",
        f"Every message on the topic exchange `{EXCHANGE}` is a CloudEvent 1.0 in structured JSON",
        f"(`content_type: {CONTENT_TYPE}`), published persistent, confirmed and mandatory, with the AMQP",
        "`message_id` = CloudEvent `id` and `type` = CloudEvent `type`. The routing key is the `type` minus",
        f"`{TYPE_PREFIX}`. Every `data` carries `schema_version`; `revision` is monotonic per source key, and",
        "a consumer skips (acks) anything not newer than what it applied. Contracts: docs/architecture.md §4.",
        "",
        "A `kabanero.snapshot` or `tekton.snapshot` whose body would pass the watcher's",
        "`SNAPSHOT_PART_BYTES` (4 MiB; RabbitMQ 4.x refuses messages over 16 MiB) is published as `parts`",
        "events of one `revision`, each with its `part` (1..`parts`), its share of `triggers` then",
        "`trigger_revisions` (`cards` then `card_revisions`), every other field whole, and the id",
        "`<kind>:<key>:<revision>:<part>`. A consumer applies the revision once it holds every part; a",
        "part alone deletes nothing (docs/design.md, section Snapshots over RabbitMQ's message size).",
        "",
        "## Reading messages in the RabbitMQ console",
        "",
        "1. Open http://127.0.0.1:15672 (guest/guest after `make run`) and pick the vhost (`kabanero-otc`,",
        "   top right).",
        "2. *Queues and Streams* → a queue (`otc-writer.events`, `otc-writer.commands`, `github-linker.events`,",
        "   `broker-api.outcomes`, `broker-api.tekton`, `broker-api.tools`, `kabanero-watcher.<cluster>.instances`,",
        "   their `.retry.<N>s` delay queues and `.dead` dead-letter queues) → *Get messages*, Ack mode",
        '   "Nack message requeue true": the payload is the CloudEvent as JSON, readable as-is.',
        "3. Properties show `message_id` and `type`; headers of a retried or dead message say why:",
        "   `x-kotc-attempt` (failed attempts so far), `x-kotc-error` (the last error),",
        "   `x-kotc-dead-reason` (why it was dead-lettered), `x-kotc-queue` / `x-kotc-routing-key` (where",
        "   it came from), `x-kotc-replayed` (times replayed by `kabanero-otc dead-letters replay`).",
        "   A message the broker itself dead-lettered (past `x-delivery-limit`) has `x-death` instead.",
        f"4. Dead letters go through the direct exchange `{DEAD_EXCHANGE}` (routing key = the consuming queue)",
        "   to `<queue>.dead`. From the command line: `kabanero-otc dead-letters list` (docs/operations.md).",
        "",
        "## Routing keys",
        "",
        "| routing key | CloudEvent type | producer | consuming queues | data |",
        "|---|---|---|---|---|",
    ]
    for key in routing_keys():
        model, _, producer, _ = _model(key)
        queues = ", ".join(f"`{q}`" if "." in q else q for q in consumers(key)) or "-"
        out.append(
            f"| `{key}` | `{TYPE_PREFIX}{key}` | {producer} | {queues} | [{model.__name__}](#{model.__name__.lower()}) |"
        )
    out += [
        "",
        "`control.resync` is answered on the request's `reply_to` queue (AMQP properties `reply_to`,",
        "`correlation_id`) with a `ResyncReply` whose CloudEvent type is "
        f"`{TYPE_PREFIX}control.resync.reply`.",
        "",
    ]
    seen: dict[str, list[str]] = {}
    for key in routing_keys():
        seen.setdefault(_model(key)[0].__name__, []).append(key)
    models: list[type[BaseModel]] = [
        ServiceEventData,
        InstanceData,
        TriggerData,
        SnapshotData,
        CommandOutcomeData,
        TektonInstallationData,
        TektonCardData,
        TektonSnapshotData,
        ToolCommand,
        ToolOutcomeData,
        ResyncRequest,
        ResyncReply,
    ]
    for model in models:
        keys = seen.get(model.__name__, [])
        out += [f"## {model.__name__}", "", (model.__doc__ or "").strip().replace("\n", " "), ""]
        if keys:
            out += ["Routing keys: " + ", ".join(f"`{k}`" for k in keys) + ".", ""]
            _, example, _, meaning = _model(keys[0])
            out += [f"Example (`{keys[0]}`: {meaning}):", ""]
        else:
            example = ResyncReply(
                cluster="default", holder="kabanero-watcher-7d9f-1", snapshots={"kabanero": 8}
            )
            out += ["Example (the reply to `control.resync`):", ""]
        key = keys[0] if keys else "control.resync.reply"
        event = CloudEvent(
            id=f"example:{key}:1",
            source="/example",
            type=TYPE_PREFIX + key,
            time=WHEN,
            subject="default/kabanero",
            data=example.model_dump(mode="json"),
        )
        out += ["```json", _json(event.model_dump(mode="json", exclude_none=True)), "```", ""]
        out += [
            "<details><summary>JSON Schema of <code>data</code></summary>",
            "",
            "```json",
            _json(model.model_json_schema()),
            "```",
            "",
            "</details>",
            "",
        ]
    out += [
        "## Envelope: CloudEvent",
        "",
        "<details><summary>JSON Schema</summary>",
        "",
        "```json",
        _json(CloudEvent.model_json_schema()),
        "```",
        "",
        "</details>",
        "",
    ]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.messages_doc", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/messages.md is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run python -m scripts.messages_doc", file=sys.stderr)
            sys.exit(1)
        return
    DOC.write_text(text)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
